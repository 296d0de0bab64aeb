"""Three bridges on one real PostgreSQL under load (testkit/load_pg.py at a smaller size):
rows equal the requests per outcome and per instance, a bridge killed mid-load loses no
answered row, and a PostgreSQL outage mid-load costs no request and no row."""

from testkit import pg


def test_three_bridges_on_postgresql_under_load_and_faults():
    pg.require()  # skip without PostgreSQL or psycopg; fail in CI
    from testkit import load_pg
    lines = []
    figures = load_pg.run(bridges=3, total=600, concurrency=20, kill_total=200, outage=3.0,
                          out=lines.append)
    print("\n".join(lines))
    assert figures["problems"] == [], "\n".join(lines + figures["problems"])
    for phase in ("mixed", "outage"):
        fig = figures[phase]
        assert fig["wrong_status"] == 0
        assert fig["rows_outcomes"] == fig["expected_outcomes"]
        assert fig["rows_instances"] == fig["expected_instances"]
        assert set(fig["rows_instances"]) == {"b1", "b2", "b3"}
        assert fig["missing_or_different"] == fig["rows_twice"] == 0
    assert figures["mixed"]["team"]["same_on_every_bridge"]
    kill = figures["kill"]
    assert kill["missing"] == 0 and kill["rows_twice"] == 0
    assert kill["complete_on_victim"] > 0 and kill["spool_integrity"] == "ok"
    outage = figures["outage"]
    assert outage["ok_answered"] == outage["ok_expected"] > 0
    assert outage["max_queued"] > 0  # rows did wait in the spools
    assert outage["drain_after_pg_back_s"] is not None
    end = figures["end"]
    assert end["same_on_every_bridge"] and end["usage"] == end["rows"]
