def openapi_document(version):
    """The OpenAPI 3.1 description of the bridge's routes, as bridge.py answers them."""
    def ref(name):
        return {"$ref": "#/components/schemas/" + name}

    def nullable(type_name, **extra):
        return {"type": [type_name, "null"], **extra}

    def error(description, **headers):
        return {"description": description,
                "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"},
                            **headers},
                "content": {"application/json": {"schema": ref("Error")}}}

    def ok_json(description, schema):
        return {"description": description,
                "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
                "content": {"application/json": {"schema": schema}}}

    def query(name, schema, description):
        return {"name": name, "in": "query", "required": False, "schema": schema,
                "description": description}

    retry_after = {"description": "Seconds to wait before trying again.",
                   "schema": {"type": "string", "pattern": "^[0-9]+$"}}
    time_value = {"type": "string", "examples": ["24h", "2026-11-25T10:00:00Z"]}
    since = query("since", time_value, "Start of the window (inclusive): ISO 8601 "
                  "(`2026-11-25T10:00:00Z`, no zone = UTC) or a time ago (`30m`, `24h`, `7d`, "
                  "`2w`; units s, m, h, d, w). Empty = open. A bad value is a 400 naming it.")
    until = query("until", time_value, "End of the window (exclusive), as `since`; must be "
                  "after `since`.")
    provider = query("provider", {"type": "string", "enum": ["claude", "ollama"]},
                     "Only this provider.")
    model = query("model", {"type": "string"}, "Only this model, as clients named it.")
    usage_errors = {"400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/Unauthorized"}}
    text_part = {"type": "object", "required": ["type", "text"],
                 "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
    image_part = {
        "type": "object", "required": ["type", "image_url"],
        "properties": {
            "type": {"const": "image_url"},
            "image_url": {
                "description": "Claude takes `data:image/...;base64,...` and http(s) URLs; "
                               "Ollama only data URLs (an http(s) URL is a 400). The bare URL "
                               "string is accepted too.",
                "oneOf": [{"type": "object", "required": ["url"],
                           "properties": {"url": {"type": "string"},
                                          "detail": {"type": "string",
                                                     "enum": ["auto", "low", "high"]}}},
                          {"type": "string"}]}}}
    content = {"oneOf": [{"type": "string"},
                         {"type": "array", "items": {"oneOf": [text_part, image_part]}}],
               "description": "Text, or content parts (text and images); the texts of the "
                              "parts are joined with newlines."}
    message_name = {"type": "string", "description": "Accepted and ignored."}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "claude-bridge",
            "version": version,
            "summary": "An OpenAI-compatible API over the Claude Code CLI and a local Ollama.",
            "description": "Models named `ollama/<name>` go to Ollama; every other model name "
                           "runs the `claude` CLI. Every chat request is logged to SQLite and "
                           "can be read back through the usage API. Errors are OpenAI error "
                           "objects. Every response carries an `X-Request-ID` header. When "
                           "`CLAUDE_AUTH_KEY` is set, every route except /health, /dashboard "
                           "and /openapi.json needs `Authorization: Bearer <key>` (a 401 "
                           "otherwise); an unknown route is a 404 and a wrong method a 405, "
                           "both as error objects.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            "/v1/chat/completions": {"post": {
                "operationId": "createChatCompletion",
                "tags": ["chat"],
                "summary": "Create a chat completion (JSON, or Server-Sent Events with "
                           "`stream: true`).",
                "description": "Every request whose body is a JSON object is one row in the "
                               "usage log, refused ones included. A stream that fails after "
                               "it began sends one `data: {\"error\": {...}}` event and ends "
                               "without `[DONE]`.",
                "parameters": [
                    {"name": "X-Session-ID", "in": "header", "required": False,
                     "description": "Keep the conversation on the bridge's side (Claude's "
                                    "session store, or memory for Ollama): later turns send "
                                    "only their new messages. 1 to 128 printable characters.",
                     "schema": {"type": "string", "minLength": 1, "maxLength": 128,
                                "pattern": "^[!-~]([ -~]*[!-~])?$"}},
                    {"$ref": "#/components/parameters/X-Request-ID"},
                ],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": ref("CreateChatCompletionRequest")}}},
                "responses": {
                    "200": {
                        "description": "The reply: a chat.completion object, or with "
                                       "`stream: true` a stream of chat.completion.chunk "
                                       "events ending with `data: [DONE]`.",
                        "headers": {
                            "X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
                        "content": {
                            "application/json": {"schema": ref("ChatCompletion")},
                            "text/event-stream": {
                                "schema": ref("ChatCompletionStreamEvent")},
                        }},
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "404": error("An `ollama/<name>` model Ollama does not have "
                                 "(code `model_not_found`)."),
                    "413": error("The body is larger than MAX_BODY_MB "
                                 "(code `request_too_large`)."),
                    "429": error("No free Claude slot within CLAUDE_QUEUE_TIMEOUT, or another "
                                 "turn of the same session is still running.",
                                 **{"Retry-After": {**retry_after, "required": True}}),
                    "502": error("The backend failed: the CLI's own message, Ollama "
                                 "unreachable (code `backend_unreachable`) or Ollama's error."),
                    "503": error("The CLI is not installed (code `claude_not_found`), or "
                                 "Ollama is busy (code `backend_busy`, with Retry-After).",
                                 **{"Retry-After": retry_after}),
                    "504": error("CLAUDE_TIMEOUT, CLAUDE_IDLE_TIMEOUT or OLLAMA_TIMEOUT "
                                 "passed (code `timeout`)."),
                },
            }},
            "/v1/models": {"get": {
                "operationId": "listModels",
                "tags": ["models"],
                "summary": "The Claude models (claude-code, sonnet, opus, haiku and the "
                           "default) then Ollama's as `ollama/<name>`.",
                "responses": {
                    "200": ok_json("The models.", ref("ModelList")),
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                },
            }},
            "/v1/usage": {"get": {
                "operationId": "getUsage",
                "tags": ["usage"],
                "summary": "Totals per model and provider, busiest first.",
                "parameters": [since, until, provider, model],
                "responses": {
                    "200": ok_json("Totals.", {"type": "array",
                                               "items": ref("UsageSummary")}),
                    **usage_errors,
                },
            }},
            "/v1/usage/recent": {"get": {
                "operationId": "getRecentUsage",
                "tags": ["usage"],
                "summary": "The latest usage rows, newest first.",
                "parameters": [
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 1000,
                                    "default": 50}, "How many rows, 1 to 1000."),
                    since,
                ],
                "responses": {
                    "200": ok_json("Rows.", {"type": "array", "items": ref("UsageRow")}),
                    **usage_errors,
                },
            }},
            "/v1/usage/timeseries": {"get": {
                "operationId": "getUsageTimeseries",
                "tags": ["usage"],
                "summary": "Sums per minute, hour or day, oldest first (only buckets with "
                           "requests).",
                "parameters": [
                    query("bucket", {"type": "string", "enum": ["minute", "hour", "day"],
                                     "default": "hour"},
                          "Bucket size; `minute` needs `since` within 2 days of `until` "
                          "(or of now)."),
                    since, until, provider, model,
                ],
                "responses": {
                    "200": ok_json("Buckets.", {"type": "array",
                                                "items": ref("UsageBucket")}),
                    **usage_errors,
                },
            }},
            "/health": {"get": {
                "operationId": "getHealth",
                "tags": ["service"],
                "summary": "Backends and database state; never needs a key.",
                "description": "Runs `claude --version` (cached for a minute) and asks Ollama "
                               "for its version; never a chat.",
                "security": [],
                "responses": {"200": ok_json("The state (also when degraded).",
                                             ref("Health"))},
            }},
            "/dashboard": {"get": {
                "operationId": "getDashboard",
                "tags": ["service"],
                "summary": "The usage dashboard, a self-contained page (it asks for the key "
                           "itself).",
                "security": [],
                "responses": {
                    "200": {"description": "The page.",
                            "headers": {"X-Request-ID": {
                                "$ref": "#/components/headers/X-Request-ID"}},
                            "content": {"text/html": {"schema": {"type": "string"}}}},
                    "404": error("dashboard.html is not installed beside bridge.py."),
                },
            }},
            "/metrics": {"get": {
                "operationId": "getMetrics",
                "tags": ["service"],
                "summary": "Prometheus metrics (text exposition format 0.0.4).",
                "description": "Needs the key like the API, unless METRICS_LOOPBACK_OPEN is "
                               "set and the scraper is on this machine.",
                "responses": {
                    "200": {"description": "Counters, histograms and gauges.",
                            "headers": {"X-Request-ID": {
                                "$ref": "#/components/headers/X-Request-ID"}},
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                },
            }},
            "/openapi.json": {"get": {
                "operationId": "getOpenAPI",
                "tags": ["service"],
                "summary": "This description.",
                "security": [],
                "responses": {"200": ok_json(
                    "The OpenAPI 3.1 document.",
                    {"type": "object", "required": ["openapi", "info", "paths"]})},
            }},
        },
        "components": {
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "`Authorization: Bearer <CLAUDE_AUTH_KEY>`, when the bridge "
                               "has a key."}},
            "parameters": {"X-Request-ID": {
                "name": "X-Request-ID", "in": "header", "required": False,
                "description": "Your id for this request: echoed in the response's "
                               "X-Request-ID and kept in its usage row when it is 1 to 128 of "
                               "`A-Z a-z 0-9 . _ : / = + -`; otherwise the bridge makes one.",
                "schema": {"type": "string"}}},
            "headers": {"X-Request-ID": {
                "description": "The request's id: the client's X-Request-ID when it was sane, "
                               "else a new one.",
                "required": True,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:/=+-]{1,128}$"}}},
            "responses": {
                "BadRequest": error("Bad JSON, a bad field or parameter (`param` names it), "
                                    "or a model name that is not valid (code "
                                    "`model_not_found`)."),
                "Unauthorized": error("Missing or wrong key (code `invalid_api_key`)."),
            },
            "schemas": {
                "Error": {
                    "type": "object", "required": ["error"], "additionalProperties": False,
                    "properties": {"error": {
                        "type": "object", "additionalProperties": False,
                        "required": ["message", "type", "param", "code"],
                        "properties": {
                            "message": {"type": "string", "minLength": 1},
                            "type": {"type": "string", "enum": [
                                "invalid_request_error", "rate_limit_error",
                                "server_error"]},
                            "param": nullable("string"),
                            "code": nullable("string"),
                        }}}},
                "CreateChatCompletionRequest": {
                    "type": "object", "required": ["messages"],
                    "description": "Fields not listed are ignored. An optional field that is "
                                   "null counts as absent.",
                    "properties": {
                        "model": {
                            "type": ["string", "null"],
                            "description": "`claude-code` (the CLI's default model), another "
                                           "Claude name (`sonnet`, `opus`, "
                                           "`claude-sonnet-4-5`, ...: letters, digits and "
                                           "`. _ - : [ ]`, not starting with `-`), or "
                                           "`ollama/<name>`. Absent: CLAUDE_DEFAULT_MODEL.",
                            "anyOf": [
                                {"type": "null"},
                                {"pattern": "^[A-Za-z0-9._:\\[\\]][A-Za-z0-9._:\\[\\]-]"
                                            "{0,199}$"},
                                {"pattern": "^ollama/[\\s\\S]+$"}],
                            "examples": ["claude-code", "sonnet", "ollama/llama3.2"]},
                        "messages": {"type": "array", "minItems": 1,
                                     "items": ref("ChatMessage")},
                        "stream": nullable("boolean"),
                        "stream_options": {
                            "type": ["object", "null"],
                            "properties": {"include_usage": nullable(
                                "boolean", description="Send a last chunk with `usage` "
                                "(and no choices) before `[DONE]`.")}},
                        "n": nullable("integer", minimum=1, maximum=1,
                                      description="Only 1 is supported."),
                        "temperature": nullable("number", minimum=0, maximum=2,
                                                description="Ollama only; Claude ignores it."),
                        "top_p": nullable("number", minimum=0, maximum=1,
                                          description="Ollama only."),
                        "max_tokens": nullable("integer", minimum=1, maximum=10_000_000,
                                               description="Ollama only (num_predict)."),
                        "max_completion_tokens": nullable(
                            "integer", minimum=1, maximum=10_000_000,
                            description="Ollama only; wins over max_tokens."),
                        "stop": {"oneOf": [{"type": "null"}, {"type": "string"},
                                           {"type": "array", "items": {"type": "string"}}],
                                 "description": "Ollama only."},
                        "seed": nullable("integer", minimum=-2 ** 63, maximum=2 ** 63 - 1,
                                         description="Ollama only."),
                        "tools": {
                            "type": ["array", "null"], "items": ref("Tool"),
                            "description": "Ollama only: passed on as they are. Claude Code "
                                           "runs its own tools."},
                        "tool_choice": {
                            "description": "Accepted and ignored.",
                            "oneOf": [
                                {"type": "null"},
                                {"type": "string", "enum": ["none", "auto", "required"]},
                                {"type": "object", "required": ["type", "function"],
                                 "properties": {
                                     "type": {"const": "function"},
                                     "function": {"type": "object", "required": ["name"],
                                                  "properties": {
                                                      "name": {"type": "string"}}}}}]},
                        "response_format": {
                            "description": "Ollama only: json_object -> format \"json\", "
                                           "json_schema -> format <schema>.",
                            "oneOf": [
                                {"type": "null"},
                                {"type": "object", "required": ["type"],
                                 "properties": {"type": {"enum": ["text", "json_object"]}}},
                                {"type": "object", "required": ["type", "json_schema"],
                                 "properties": {
                                     "type": {"const": "json_schema"},
                                     "json_schema": {
                                         "type": "object", "required": ["schema"],
                                         "properties": {
                                             "name": {"type": "string"},
                                             "strict": nullable("boolean"),
                                             "schema": {"type": "object"}}}}}]},
                        "user": {"type": ["string", "null"],
                                 "description": "Accepted and ignored."},
                    },
                },
                "ChatMessage": {"oneOf": [
                    {"type": "object", "required": ["role", "content"],
                     "description": "System and developer messages become Claude Code's "
                                    "system prompt (appended, or replacing it with "
                                    "CLAUDE_SYSTEM_PROMPT=replace).",
                     "properties": {"role": {"enum": ["system", "developer"]},
                                    "content": content, "name": message_name}},
                    {"type": "object", "required": ["role", "content"],
                     "properties": {"role": {"const": "user"}, "content": content,
                                    "name": message_name}},
                    {"type": "object", "required": ["role"],
                     "description": "`content` may be null or absent only with tool_calls.",
                     "properties": {
                         "role": {"const": "assistant"},
                         "content": {"oneOf": [{"type": "null"}, *content["oneOf"]]},
                         "name": message_name,
                         "tool_calls": {"type": ["array", "null"],
                                        "items": ref("MessageToolCall")}},
                     "anyOf": [
                         {"required": ["content"],
                          "properties": {"content": {"type": ["string", "array"]}}},
                         {"required": ["tool_calls"],
                          "properties": {"tool_calls": {"type": "array", "minItems": 1}}}]},
                    {"type": "object", "required": ["role", "content"],
                     "properties": {
                         "role": {"const": "tool"}, "content": content,
                         "tool_call_id": {
                             "type": "string",
                             "description": "The id of the assistant tool call it answers."}}},
                ]},
                "MessageToolCall": {
                    "type": "object", "required": ["function"],
                    "properties": {
                        "id": {"type": "string"},
                        "type": {"const": "function"},
                        "function": {
                            "type": "object", "required": ["name"],
                            "properties": {
                                "name": {"type": "string"},
                                "arguments": {
                                    "type": "string", "default": "{}",
                                    "description": "A JSON object, as a string (Ollama "
                                                   "refuses anything else with a 400)."}}}}},
                "Tool": {
                    "type": "object", "required": ["type", "function"],
                    "properties": {
                        "type": {"const": "function"},
                        "function": {
                            "type": "object", "required": ["name"],
                            "properties": {
                                "name": {"type": "string"},
                                "description": {"type": "string"},
                                "parameters": {"type": "object"},
                                "strict": nullable("boolean")}}}},
                "ToolCall": {
                    "type": "object", "additionalProperties": False,
                    "required": ["id", "type", "function"],
                    "properties": {
                        "id": {"type": "string", "pattern": "^call_[0-9a-f]{24}$"},
                        "type": {"const": "function"},
                        "function": {
                            "type": "object", "additionalProperties": False,
                            "required": ["name", "arguments"],
                            "properties": {"name": {"type": "string"},
                                           "arguments": {"type": "string",
                                                         "contentMediaType":
                                                             "application/json"}}}}},
                "ToolCallDelta": {
                    "type": "object", "additionalProperties": False,
                    "required": ["index", "id", "type", "function"],
                    "description": "A whole tool call in one delta, numbered from 0 across "
                                   "the stream.",
                    "properties": {
                        "index": {"type": "integer", "minimum": 0},
                        "id": {"type": "string", "pattern": "^call_[0-9a-f]{24}$"},
                        "type": {"const": "function"},
                        "function": {
                            "type": "object", "additionalProperties": False,
                            "required": ["name", "arguments"],
                            "properties": {"name": {"type": "string"},
                                           "arguments": {"type": "string"}}}}},
                "Usage": {
                    "type": "object", "additionalProperties": False,
                    "required": ["prompt_tokens", "completion_tokens", "total_tokens",
                                 "prompt_tokens_details"],
                    "description": "prompt_tokens = input + cache creation + cache read "
                                   "tokens; cached_tokens = cache read.",
                    "properties": {
                        "prompt_tokens": {"type": "integer", "minimum": 0},
                        "completion_tokens": {"type": "integer", "minimum": 0},
                        "total_tokens": {"type": "integer", "minimum": 0},
                        "prompt_tokens_details": {
                            "type": "object", "additionalProperties": False,
                            "required": ["cached_tokens"],
                            "properties": {"cached_tokens": {"type": "integer",
                                                             "minimum": 0}}}}},
                "FinishReason": {"type": "string", "enum": ["stop", "length", "tool_calls"]},
                "ChatCompletion": {
                    "type": "object", "additionalProperties": False,
                    "required": ["id", "object", "created", "model", "system_fingerprint",
                                 "choices", "usage"],
                    "properties": {
                        "id": {"type": "string", "pattern": "^chatcmpl-[0-9a-f]{24}$"},
                        "object": {"const": "chat.completion"},
                        "created": {"type": "integer"},
                        "model": {"type": "string", "description": "As the client named it."},
                        "system_fingerprint": {"type": "null"},
                        "choices": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                            "type": "object", "additionalProperties": False,
                            "required": ["index", "message", "logprobs", "finish_reason"],
                            "properties": {
                                "index": {"const": 0},
                                "message": {
                                    "type": "object", "additionalProperties": False,
                                    "required": ["role", "content"],
                                    "properties": {
                                        "role": {"const": "assistant"},
                                        "content": nullable(
                                            "string", description="null only beside "
                                            "tool_calls with no text."),
                                        "tool_calls": {"type": "array", "minItems": 1,
                                                       "items": ref("ToolCall")}}},
                                "logprobs": {"type": "null"},
                                "finish_reason": ref("FinishReason")}}},
                        "usage": ref("Usage"),
                    }},
                "ChatCompletionChunk": {
                    "type": "object", "additionalProperties": False,
                    "required": ["id", "object", "created", "model", "system_fingerprint",
                                 "choices"],
                    "description": "Every chunk of a stream has the same id and created. The "
                                   "first delta is `{\"role\": \"assistant\", \"content\": "
                                   "\"\"}`; with include_usage the last chunk has no choices "
                                   "and the usage.",
                    "properties": {
                        "id": {"type": "string", "pattern": "^chatcmpl-[0-9a-f]{24}$"},
                        "object": {"const": "chat.completion.chunk"},
                        "created": {"type": "integer"},
                        "model": {"type": "string"},
                        "system_fingerprint": {"type": "null"},
                        "choices": {"type": "array", "maxItems": 1, "items": {
                            "type": "object", "additionalProperties": False,
                            "required": ["index", "delta", "logprobs", "finish_reason"],
                            "properties": {
                                "index": {"const": 0},
                                "delta": {
                                    "type": "object", "additionalProperties": False,
                                    "properties": {
                                        "role": {"const": "assistant"},
                                        "content": {"type": "string"},
                                        "tool_calls": {"type": "array", "minItems": 1,
                                                       "items": ref("ToolCallDelta")}}},
                                "logprobs": {"type": "null"},
                                "finish_reason": {"oneOf": [{"type": "null"},
                                                            ref("FinishReason")]}}}},
                        "usage": ref("Usage"),
                    }},
                "ChatCompletionStreamEvent": {
                    "type": "object", "required": ["data"],
                    "description": "One Server-Sent Event of a stream (`: keep-alive` comments "
                                   "come between them while the backend is silent): a "
                                   "chat.completion.chunk, an error object (the stream failed; "
                                   "it ends there, without [DONE]), or the closing `[DONE]`.",
                    "properties": {
                        "event": {"const": "message"},
                        "data": {"anyOf": [
                            {"const": "[DONE]"},
                            {"type": "string", "contentMediaType": "application/json",
                             "contentSchema": {"oneOf": [ref("ChatCompletionChunk"),
                                                         ref("Error")]}}]}}},
                "Model": {
                    "type": "object", "additionalProperties": False,
                    "required": ["id", "object", "created", "owned_by"],
                    "properties": {
                        "id": {"type": "string", "examples": ["claude-code",
                                                              "ollama/llama3.2:latest"]},
                        "object": {"const": "model"},
                        "created": {"type": "integer", "description": "Claude models: when "
                                    "the bridge started; Ollama's: modified_at (0 if unknown)."},
                        "owned_by": {"type": "string", "enum": ["anthropic", "ollama"]}}},
                "ModelList": {
                    "type": "object", "additionalProperties": False,
                    "required": ["object", "data"],
                    "properties": {"object": {"const": "list"},
                                   "data": {"type": "array", "items": ref("Model")}}},
                "UsageSummary": {
                    "type": "object", "additionalProperties": False,
                    "required": ["model", "provider", "requests", "errors", "prompt_tokens",
                                 "completion_tokens", "total_tokens", "avg_duration_ms",
                                 "cached_tokens", "cost_usd"],
                    "properties": {
                        "model": nullable("string", description="null only for rows migrated "
                                          "without one."),
                        "provider": nullable("string"),
                        "requests": {"type": "integer", "minimum": 1},
                        "errors": {"type": "integer", "minimum": 0,
                                   "description": "Requests whose outcome was not ok."},
                        "prompt_tokens": {"type": "integer", "minimum": 0},
                        "completion_tokens": {"type": "integer", "minimum": 0},
                        "total_tokens": {"type": "integer", "minimum": 0},
                        "avg_duration_ms": {"type": "number", "minimum": 0},
                        "cached_tokens": {"type": "integer", "minimum": 0},
                        "cost_usd": {"type": "number", "minimum": 0}}},
                "UsageRow": {
                    "type": "object", "additionalProperties": False,
                    "required": ["id", "ts", "request_id", "x_request_id", "model", "provider",
                                 "session_id", "stream", "outcome", "status", "error",
                                 "prompt_tokens", "completion_tokens", "total_tokens",
                                 "cached_tokens", "cost_usd", "duration_ms", "ttft_ms"],
                    "description": "One request. Rows migrated from the Go bridge have null "
                                   "request_id, status and session fields.",
                    "properties": {
                        "id": {"type": "integer"},
                        "ts": {"type": "string", "format": "date-time",
                               "description": "UTC, with milliseconds."},
                        "request_id": nullable("string", description="The completion's id "
                                               "(chatcmpl-...)."),
                        "x_request_id": nullable("string", description="The request's "
                                                 "X-Request-ID."),
                        "model": nullable("string"),
                        "provider": nullable("string", examples=["claude", "ollama"]),
                        "session_id": nullable("string"),
                        "stream": {"type": "boolean"},
                        "outcome": {"type": "string", "enum": ["ok", "error", "cancelled"]},
                        "status": nullable("integer", description="HTTP status; 499 = the "
                                           "client went away."),
                        "error": nullable("string", maxLength=500),
                        "prompt_tokens": {"type": "integer", "minimum": 0},
                        "completion_tokens": {"type": "integer", "minimum": 0},
                        "total_tokens": {"type": "integer", "minimum": 0},
                        "cached_tokens": {"type": "integer", "minimum": 0},
                        "cost_usd": {"type": "number", "minimum": 0},
                        "duration_ms": nullable("integer", minimum=0),
                        "ttft_ms": nullable("integer", minimum=0,
                                            description="Time to the first token; null when "
                                                        "none came.")}},
                "UsageBucket": {
                    "type": "object", "additionalProperties": False,
                    "required": ["bucket", "requests", "errors", "prompt_tokens",
                                 "completion_tokens", "total_tokens", "cost_usd"],
                    "properties": {
                        "bucket": {"type": "string", "format": "date-time",
                                   "description": "Start of the minute, hour or day (UTC)."},
                        "requests": {"type": "integer", "minimum": 0},
                        "errors": {"type": "integer", "minimum": 0},
                        "prompt_tokens": {"type": "integer", "minimum": 0},
                        "completion_tokens": {"type": "integer", "minimum": 0},
                        "total_tokens": {"type": "integer", "minimum": 0},
                        "cost_usd": {"type": "number", "minimum": 0}}},
                "Health": {
                    "type": "object", "additionalProperties": False,
                    "required": ["status", "version", "backends", "database"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "degraded"],
                                   "description": "ok: the database works and at least one "
                                                  "backend is usable."},
                        "version": {"type": "string"},
                        "backends": {
                            "type": "object", "additionalProperties": False,
                            "required": ["claude", "ollama"],
                            "properties": {
                                "claude": {
                                    "type": "object", "additionalProperties": False,
                                    "required": ["ok", "binary", "version", "error"],
                                    "properties": {"ok": {"type": "boolean"},
                                                   "binary": nullable("string"),
                                                   "version": nullable("string"),
                                                   "error": nullable("string")}},
                                "ollama": {
                                    "type": "object", "additionalProperties": False,
                                    "required": ["ok", "url", "version", "error"],
                                    "properties": {"ok": {"type": "boolean"},
                                                   "url": {"type": "string"},
                                                   "version": nullable("string"),
                                                   "error": nullable("string")}}}},
                        "database": {
                            "type": "object", "additionalProperties": False,
                            "required": ["path", "ok", "error"],
                            "properties": {"path": {"type": "string"},
                                           "ok": {"type": "boolean"},
                                           "error": nullable("string")}}}},
            },
        },
    }
