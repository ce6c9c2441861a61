//! An agent app's `agent_thought` updates → short reasoning text about the tools it used.
//! Dify re-sends one thought (same `id`) as it fills in: empty, then the tool and its
//! input, then the observation. A tool thought is told once, when its observation has
//! come (or, if none comes, when the agent moves on to another thought or the answer
//! ends). A thought's own `thought` text is never told: it is the answer's text, which
//! Dify streams as `agent_message` too (the last one repeats the whole answer). Pure.

use serde_json::Value;

/// Longest tool input or observation summary, in characters.
const SUMMARY_CHARS: usize = 200;

/// One `agent_thought` update, as Dify sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThoughtUpdate {
    pub id: String,
    /// Tool names, `;`-joined; empty for a thought without a tool.
    pub tool: String,
    /// A JSON string: per tool name, its input.
    pub tool_input: String,
    /// A JSON string (per tool name, its result) or plain text.
    pub observation: String,
}

/// The thoughts of one answer.
#[derive(Debug, Default)]
pub struct AgentThoughts {
    /// The latest state of a tool thought not told yet.
    pending: Option<ThoughtUpdate>,
    /// Thoughts already told (or without a tool), whose later updates are ignored.
    told: Vec<String>,
}

impl AgentThoughts {
    /// One update; the reasoning text it completes, if any.
    pub fn update(&mut self, update: ThoughtUpdate) -> Option<String> {
        if self.told.contains(&update.id) {
            return None;
        }
        // Another thought: the agent moved on, so a pending one is as complete as it gets.
        let moved_on = match &self.pending {
            Some(p) if p.id != update.id => self.flush(),
            _ => None,
        };
        let now = if update.tool.trim().is_empty() {
            None
        } else if !update.observation.trim().is_empty() {
            self.told.push(update.id.clone());
            self.pending = None;
            Some(describe(&update))
        } else {
            self.pending = Some(update);
            None
        };
        match (moved_on, now) {
            (Some(mut a), Some(b)) => {
                a.push_str(&b);
                Some(a)
            }
            (a, b) => a.or(b),
        }
    }

    /// The answer ends: a tool thought still waiting for its observation is told without.
    pub fn flush(&mut self) -> Option<String> {
        let pending = self.pending.take()?;
        self.told.push(pending.id.clone());
        Some(describe(&pending))
    }
}

/// `Using tool `name` with {input}.` and `Result: …` per tool, one line each.
fn describe(thought: &ThoughtUpdate) -> String {
    let inputs = serde_json::from_str::<Value>(&thought.tool_input).ok();
    let observations = serde_json::from_str::<Value>(&thought.observation).ok();
    let tools: Vec<&str> = thought
        .tool
        .split(';')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let mut text = String::new();
    for tool in &tools {
        let input = match &inputs {
            Some(Value::Object(map)) if map.contains_key(*tool) => summary(&map[*tool]),
            Some(value) if tools.len() == 1 => summary(value),
            None if tools.len() == 1 => shorten(thought.tool_input.trim()),
            _ => String::new(),
        };
        if input.is_empty() || input == "{}" {
            text.push_str(&format!("Using tool `{tool}`.\n"));
        } else {
            text.push_str(&format!("Using tool `{tool}` with {input}.\n"));
        }
        let result = match &observations {
            Some(Value::Object(map)) if map.contains_key(*tool) => summary(&map[*tool]),
            Some(value) if tools.len() == 1 => summary(value),
            // Plain text, not JSON.
            None if tools.len() == 1 => shorten(thought.observation.trim()),
            _ => String::new(),
        };
        if !result.is_empty() {
            text.push_str(&format!("Result: {result}\n"));
        }
    }
    text
}

/// A JSON value on one short line: strings as they are, anything else as compact JSON.
fn summary(value: &Value) -> String {
    match value {
        Value::String(s) => shorten(s.trim()),
        Value::Null => String::new(),
        other => shorten(&other.to_string()),
    }
}

fn shorten(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= SUMMARY_CHARS {
        return line;
    }
    let mut short: String = line.chars().take(SUMMARY_CHARS).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(id: &str, tool: &str, input: &str, observation: &str) -> ThoughtUpdate {
        ThoughtUpdate {
            id: id.into(),
            tool: tool.into(),
            tool_input: input.into(),
            observation: observation.into(),
        }
    }

    /// The updates of the shared sample `agent-chat-stream.sse`, in order.
    #[test]
    fn sample_agent_stream_tells_the_tool_once() {
        let mut thoughts = AgentThoughts::default();
        let p1 = "0a3d6f9c-2e5b-4b8a-9d1c-4f7a2e5b8c31";
        let p2 = "5c8f2b5e-9a1d-4e4c-8b7f-2d5a8c1f4e96";
        let input = r#"{"current_time": {"timezone": "Europe/Paris"}}"#;
        let obs = r#"{"current_time": "2026-07-16 14:32:25"}"#;
        assert_eq!(thoughts.update(update(p1, "", "", "")), None);
        assert_eq!(thoughts.update(update(p1, "current_time", input, "")), None);
        assert_eq!(
            thoughts
                .update(update(p1, "current_time", input, obs))
                .as_deref(),
            Some(
                "Using tool `current_time` with {\"timezone\":\"Europe/Paris\"}.\nResult: 2026-07-16 14:32:25\n"
            )
        );
        assert_eq!(thoughts.update(update(p2, "", "", "")), None);
        // The final thought repeats the answer: never told.
        assert_eq!(thoughts.update(update(p2, "", "", "")), None);
        // Re-sent after it was told: not again.
        assert_eq!(
            thoughts.update(update(p1, "current_time", input, obs)),
            None
        );
        assert_eq!(thoughts.flush(), None);
    }

    #[test]
    fn a_tool_without_observation_is_told_when_the_agent_moves_on() {
        let mut thoughts = AgentThoughts::default();
        assert_eq!(
            thoughts.update(update("a", "search", r#"{"search": {"q": "x"}}"#, "")),
            None
        );
        assert_eq!(
            thoughts.update(update("b", "", "", "")).as_deref(),
            Some("Using tool `search` with {\"q\":\"x\"}.\n")
        );
        assert_eq!(thoughts.flush(), None);
        assert_eq!(thoughts.update(update("c", "clock", "{}", "")), None);
        assert_eq!(thoughts.flush().as_deref(), Some("Using tool `clock`.\n"));
    }

    #[test]
    fn several_tools_plain_observations_and_long_results() {
        let mut thoughts = AgentThoughts::default();
        let text = thoughts
            .update(update(
                "a",
                "weather;clock",
                r#"{"weather": {"city": "Paris"}, "clock": {}}"#,
                r#"{"weather": "sunny", "clock": "12:00"}"#,
            ))
            .unwrap();
        assert_eq!(
            text,
            "Using tool `weather` with {\"city\":\"Paris\"}.\nResult: sunny\nUsing tool `clock`.\nResult: 12:00\n"
        );
        let long = "é".repeat(500);
        let text = thoughts
            .update(update("b", "fetch", "not json", &long))
            .unwrap();
        assert!(text.starts_with("Using tool `fetch` with not json.\nResult: éé"));
        assert!(text.ends_with("…\n"));
        assert_eq!(text.chars().filter(|&c| c == 'é').count(), SUMMARY_CHARS);
    }
}
