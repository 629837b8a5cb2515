//! A stand-in for the Anthropic Messages API, for the end-to-end agent
//! test: the agent in L2 talks to it instead of api.anthropic.com (through a
//! `[network] hosts` pin to L1's loopback and `ANTHROPIC_BASE_URL`).
//!
//! It plays one scripted turn: a request that offers the `Write` tool gets
//! a tool call writing [`Script::content`] to [`Script::path`]; the request
//! that carries that call's result gets a final text; anything else (title
//! or summary side requests) gets a short text. Answers stream as
//! server-sent events when the request asks for `stream`, as one JSON
//! message otherwise — the event sequence of the Messages API.

use serde_json::{json, Value};

/// What the mock makes the agent do.
#[derive(Debug, Clone)]
pub struct Script {
    /// The file the tool call writes (absolute, in the guest).
    pub path: String,
    /// What it writes there.
    pub content: String,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A tool call.
    ToolUse {
        /// The tool.
        name: String,
        /// Its input.
        input: Value,
    },
    /// Plain text, ending the turn.
    Text(String),
}

/// The text of the final answer, once the tool ran.
pub const DONE_TEXT: &str = "Done: the file is written.";

/// What to answer `request` (a Messages API request body).
pub fn decide(request: &Value, script: &Script) -> Reply {
    let has_tool_result = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"));
    if has_tool_result {
        return Reply::Text(DONE_TEXT.into());
    }
    let offers_write = request["tools"]
        .as_array()
        .is_some_and(|tools| tools.iter().any(|t| t["name"] == "Write"));
    if offers_write {
        return Reply::ToolUse {
            name: "Write".into(),
            input: json!({ "file_path": script.path, "content": script.content }),
        };
    }
    Reply::Text("ok".into())
}

fn usage() -> Value {
    json!({ "input_tokens": 12, "output_tokens": 8,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0 })
}

fn block_and_stop(reply: &Reply) -> (Value, Option<Value>, &'static str) {
    match reply {
        Reply::ToolUse { name, input } => (
            json!({ "type": "tool_use", "id": "toolu_01mock", "name": name, "input": {} }),
            Some(json!({ "type": "input_json_delta", "partial_json": input.to_string() })),
            "tool_use",
        ),
        Reply::Text(text) => (
            json!({ "type": "text", "text": "" }),
            Some(json!({ "type": "text_delta", "text": text })),
            "end_turn",
        ),
    }
}

/// The whole answer as one JSON message (`stream: false`).
pub fn message(reply: &Reply, model: &str) -> Value {
    let content = match reply {
        Reply::ToolUse { name, input } => {
            json!([{ "type": "tool_use", "id": "toolu_01mock", "name": name, "input": input }])
        }
        Reply::Text(text) => json!([{ "type": "text", "text": text }]),
    };
    let (_, _, stop) = block_and_stop(reply);
    json!({ "id": "msg_01mock", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage() })
}

/// The answer as server-sent events (`stream: true`).
pub fn events(reply: &Reply, model: &str) -> String {
    let (block, delta, stop) = block_and_stop(reply);
    let mut start = message(&Reply::Text(String::new()), model);
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    let mut list = vec![
        (
            "message_start",
            json!({ "type": "message_start", "message": start }),
        ),
        (
            "content_block_start",
            json!({ "type": "content_block_start", "index": 0, "content_block": block }),
        ),
    ];
    if let Some(delta) = delta {
        list.push((
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 0, "delta": delta }),
        ));
    }
    list.push((
        "content_block_stop",
        json!({ "type": "content_block_stop", "index": 0 }),
    ));
    list.push((
        "message_delta",
        json!({ "type": "message_delta",
                "delta": { "stop_reason": stop, "stop_sequence": null },
                "usage": { "output_tokens": 8 } }),
    ));
    list.push(("message_stop", json!({ "type": "message_stop" })));
    list.iter()
        .map(|(event, data)| format!("event: {event}\ndata: {data}\n\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script() -> Script {
        Script {
            path: "/w/hello.txt".into(),
            content: "hi\n".into(),
        }
    }

    #[test]
    fn one_turn_a_tool_call_then_the_final_text() {
        let first = json!({ "model": "m", "tools": [{ "name": "Bash" }, { "name": "Write" }],
                            "messages": [{ "role": "user", "content": "write it" }] });
        let Reply::ToolUse { name, input } = decide(&first, &script()) else {
            panic!("no tool call");
        };
        assert_eq!(name, "Write");
        assert_eq!(input["file_path"], "/w/hello.txt");
        let second = json!({ "tools": [{ "name": "Write" }], "messages": [
            { "role": "user", "content": "write it" },
            { "role": "assistant", "content": [{ "type": "tool_use" }] },
            { "role": "user", "content": [{ "type": "tool_result", "tool_use_id": "toolu_01mock" }] }
        ]});
        assert_eq!(decide(&second, &script()), Reply::Text(DONE_TEXT.into()));
        assert_eq!(
            decide(&json!({ "messages": [] }), &script()),
            Reply::Text("ok".into())
        );
        assert_eq!(
            decide(&json!("garbage"), &script()),
            Reply::Text("ok".into())
        );
    }

    #[test]
    fn events_follow_the_messages_api_sequence() {
        let reply = decide(
            &json!({ "tools": [{ "name": "Write" }], "messages": [] }),
            &script(),
        );
        let sse = events(&reply, "claude-x");
        let names: Vec<&str> = sse
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        // Every data line is JSON, and the tool input arrives whole.
        let datas: Vec<Value> = sse
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let partial = datas[2]["delta"]["partial_json"].as_str().unwrap();
        let input: Value = serde_json::from_str(partial).unwrap();
        assert_eq!(input["content"], "hi\n");
        assert_eq!(datas[0]["message"]["model"], "claude-x");
        assert_eq!(datas[4]["delta"]["stop_reason"], "tool_use");
        let whole = message(&reply, "claude-x");
        assert_eq!(whole["content"][0]["input"]["file_path"], "/w/hello.txt");
    }
}
