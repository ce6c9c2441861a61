//! Thinking written inline at the start of an answer (`<think>…</think>`, `<thinking>…`,
//! older Dify's `<details …><summary> Thinking... </summary>…</details>`) → reasoning
//! pieces apart from the answer text. Pure and incremental: Dify may cut a tag anywhere,
//! so text is held back only while it may still be (part of) a tag, and every other byte
//! goes out once, as reasoning or as answer.

use std::borrow::Cow;

use super::Piece;

/// A longer opening (leading whitespace, a `<details>` tag's attributes) is not thinking:
/// it goes out as answer text rather than being held for ever.
const MAX_OPENER: usize = 1024;

/// The tags that open a thinking block, with the tag that closes it.
const OPENERS: &[(&str, &str)] = &[("<think>", "</think>"), ("<thinking>", "</thinking>")];
/// Empty thinking blocks: dropped, the answer follows.
const EMPTY: &[&str] = &["<think/>", "<think />", "<thinking/>", "<thinking />"];
const DETAILS: &str = "<details";
const SUMMARY: &str = "<summary>";
const SUMMARY_END: &str = "</summary>";
const DETAILS_END: &str = "</details>";
/// Longest summary text of Dify's `<details>` wrapper (it says " Thinking... ").
const MAX_SUMMARY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing decided yet: the answer may still open with a thinking block.
    Start,
    /// Inside the thinking, until `close`; `leading`: newlines here are dropped.
    Thinking { close: &'static str, leading: bool },
    /// Answer text from here on; `leading`: newlines here (after the block) are dropped.
    Answer { leading: bool },
}

/// Splits one answer's text into thinking and answer, as it streams.
#[derive(Debug)]
pub struct ThinkSplitter {
    state: State,
    /// Text not given out yet: a possible opening, or a possible start of the closing tag.
    held: String,
}

impl Default for ThinkSplitter {
    fn default() -> Self {
        Self::new()
    }
}

/// How the start of an answer opens.
enum Opening {
    /// Too little text to tell.
    NeedMore,
    /// Not with thinking.
    Plain,
    /// A thinking block whose opening takes `len` bytes and ends at `close`.
    Block { len: usize, close: &'static str },
    /// An empty block of `len` bytes.
    Empty { len: usize },
}

impl ThinkSplitter {
    pub fn new() -> Self {
        Self {
            state: State::Start,
            held: String::new(),
        }
    }

    /// Splits the next piece of answer text into `out`.
    pub fn push(&mut self, text: String, out: &mut Vec<Piece>) {
        match self.state {
            State::Start => {
                self.held.push_str(&text);
                // Decided on the first MAX_OPENER bytes alone, so that however the text is
                // cut, the decision is the same.
                let decision = match opening(&self.held) {
                    Opening::Block { len, .. } | Opening::Empty { len } if len > MAX_OPENER => {
                        Opening::Plain
                    }
                    other => other,
                };
                match decision {
                    Opening::NeedMore if self.held.len() <= MAX_OPENER => {}
                    Opening::NeedMore | Opening::Plain => {
                        self.state = State::Answer { leading: false };
                        out.push(Piece::Text(std::mem::take(&mut self.held)));
                    }
                    Opening::Block { len, close } => {
                        let rest = self.held.split_off(len);
                        self.held.clear();
                        self.state = State::Thinking {
                            close,
                            leading: true,
                        };
                        self.thinking(rest, out);
                    }
                    Opening::Empty { len } => {
                        let rest = self.held.split_off(len);
                        self.held.clear();
                        self.state = State::Answer { leading: true };
                        self.answer(rest, out);
                    }
                }
            }
            State::Thinking { .. } => self.thinking(text, out),
            State::Answer { .. } => self.answer(text, out),
        }
    }

    /// The answer's text is complete: whatever was held back goes out as what it is.
    pub fn finish(&mut self, out: &mut Vec<Piece>) {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return;
        }
        match self.state {
            State::Start | State::Answer { .. } => out.push(Piece::Text(held)),
            State::Thinking { .. } => out.push(Piece::Reasoning(held)),
        }
        self.state = State::Answer { leading: false };
    }

    fn thinking(&mut self, text: String, out: &mut Vec<Piece>) {
        let State::Thinking { close, leading } = self.state else {
            return;
        };
        let mut buf = if self.held.is_empty() {
            text
        } else {
            let mut held = std::mem::take(&mut self.held);
            held.push_str(&text);
            held
        };
        if leading {
            let kept = buf.trim_start_matches(['\r', '\n']).len();
            buf.drain(..buf.len() - kept);
            if buf.is_empty() {
                return;
            }
            self.state = State::Thinking {
                close,
                leading: false,
            };
        }
        if let Some(at) = find_ignore_case(&buf, close) {
            let rest = buf.split_off(at + close.len());
            buf.truncate(at);
            if !buf.is_empty() {
                out.push(Piece::Reasoning(buf));
            }
            self.state = State::Answer { leading: true };
            self.answer(rest, out);
            return;
        }
        // The end may hold the start of the closing tag: keep it until the next text says.
        let keep = partial_suffix(&buf, close);
        self.held = buf.split_off(buf.len() - keep);
        if !buf.is_empty() {
            out.push(Piece::Reasoning(buf));
        }
    }

    fn answer(&mut self, mut text: String, out: &mut Vec<Piece>) {
        if let State::Answer { leading: true } = self.state {
            let kept = text.trim_start_matches(['\r', '\n']).len();
            text.drain(..text.len() - kept);
            if text.is_empty() {
                return;
            }
            self.state = State::Answer { leading: false };
        }
        if !text.is_empty() {
            out.push(Piece::Text(text));
        }
    }
}

/// The answer without its leading thinking block: what a client that shows the thinking
/// apart (Open WebUI) keeps, and sends back as history.
pub fn answer_part(visible: &str) -> Cow<'_, str> {
    // Only a text opening with a tag can hold a thinking block: any other answer is taken
    // as it is, never copied (it can be tens of MiB).
    if !visible.trim_start().starts_with('<') {
        return Cow::Borrowed(visible);
    }
    let mut splitter = ThinkSplitter::new();
    let mut pieces = Vec::new();
    splitter.push(visible.to_string(), &mut pieces);
    splitter.finish(&mut pieces);
    let mut answer = String::new();
    for piece in pieces {
        if let Piece::Text(text) = piece {
            answer.push_str(&text);
        }
    }
    Cow::Owned(answer)
}

fn opening(held: &str) -> Opening {
    let s = held.trim_start();
    let ws = held.len() - s.len();
    if s.is_empty() {
        return Opening::NeedMore;
    }
    if !s.starts_with('<') {
        return Opening::Plain;
    }
    for (tag, close) in OPENERS {
        if starts_with_ignore_case(s, tag) {
            return Opening::Block {
                len: ws + tag.len(),
                close,
            };
        }
    }
    for tag in EMPTY {
        if starts_with_ignore_case(s, tag) {
            return Opening::Empty {
                len: ws + tag.len(),
            };
        }
    }
    if starts_with_ignore_case(s, DETAILS) {
        return match details(&s[DETAILS.len()..]) {
            Some(Some(len)) => Opening::Block {
                len: ws + DETAILS.len() + len,
                close: DETAILS_END,
            },
            Some(None) => Opening::Plain,
            None => Opening::NeedMore,
        };
    }
    let candidates = OPENERS
        .iter()
        .map(|(tag, _)| *tag)
        .chain(EMPTY.iter().copied());
    if candidates
        .chain([DETAILS])
        .any(|tag| s.len() < tag.len() && starts_with_ignore_case(tag, s))
    {
        Opening::NeedMore
    } else {
        Opening::Plain
    }
}

/// What follows `<details`: `None` while it cannot be told, `Some(None)` when it is not
/// Dify's thinking wrapper, `Some(Some(len))` for the length of the wrapper's opening
/// (attributes, `>`, the `<summary>` that says "Thinking").
fn details(s: &str) -> Option<Option<usize>> {
    let first = s.chars().next()?;
    if first != '>' && !first.is_whitespace() {
        return Some(None);
    }
    let end_tag = s.find('>')? + 1;
    let after = &s[end_tag..];
    let summary = after.trim_start();
    let ws = after.len() - summary.len();
    if summary.len() < SUMMARY.len() {
        // `None`: it may still become `<summary>`.
        return (!starts_with_ignore_case(SUMMARY, summary)).then_some(None);
    }
    if !starts_with_ignore_case(summary, SUMMARY) {
        return Some(None);
    }
    let inner = &summary[SUMMARY.len()..];
    // The wrapper's summary is short: a long one is not the wrapper, whether or not its
    // end has come yet (the same answer however the text is cut).
    let Some(end) = find_ignore_case(inner, SUMMARY_END) else {
        return (inner.len() >= MAX_SUMMARY + SUMMARY_END.len()).then_some(None);
    };
    if end > MAX_SUMMARY || !starts_with_ignore_case(inner[..end].trim(), "thinking") {
        return Some(None);
    }
    Some(Some(end_tag + ws + SUMMARY.len() + end + SUMMARY_END.len()))
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Byte offset of `tag` (ASCII) in `s`, ignoring ASCII case.
fn find_ignore_case(s: &str, tag: &str) -> Option<usize> {
    let tag = tag.as_bytes();
    s.as_bytes()
        .windows(tag.len())
        .position(|w| w.eq_ignore_ascii_case(tag))
}

/// Length of the longest end of `s` that is a proper start of `tag` (ASCII, starting
/// with `<`, so the cut is always on a character boundary).
fn partial_suffix(s: &str, tag: &str) -> usize {
    let bytes = s.as_bytes();
    let longest = (tag.len() - 1).min(bytes.len());
    (1..=longest)
        .rev()
        .find(|&k| bytes[bytes.len() - k..].eq_ignore_ascii_case(&tag.as_bytes()[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reasoning and answer text from `parts` fed in order.
    fn split(parts: &[&str]) -> (String, String) {
        let mut splitter = ThinkSplitter::new();
        let mut out = Vec::new();
        for part in parts {
            splitter.push(part.to_string(), &mut out);
        }
        splitter.finish(&mut out);
        let (mut reasoning, mut answer) = (String::new(), String::new());
        for piece in out {
            match piece {
                Piece::Reasoning(t) => {
                    assert!(!t.is_empty(), "empty reasoning piece");
                    reasoning.push_str(&t)
                }
                Piece::Text(t) => {
                    assert!(!t.is_empty(), "empty text piece");
                    answer.push_str(&t)
                }
                other => panic!("unexpected piece {other:?}"),
            }
        }
        (reasoning, answer)
    }

    /// Every way of cutting `input` in two and in three (on character boundaries) gives
    /// the same result as the whole text at once; returns that result.
    fn every_split(input: &str) -> (String, String) {
        let whole = split(&[input]);
        let cuts: Vec<usize> = (0..=input.len())
            .filter(|&i| input.is_char_boundary(i))
            .collect();
        for &i in &cuts {
            assert_eq!(split(&[&input[..i], &input[i..]]), whole, "cut at {i}");
            for &j in cuts.iter().filter(|&&j| j >= i) {
                let three = split(&[&input[..i], &input[i..j], &input[j..]]);
                assert_eq!(three, whole, "cuts at {i} and {j}");
            }
        }
        whole
    }

    fn pair(reasoning: &str, answer: &str) -> (String, String) {
        (reasoning.to_string(), answer.to_string())
    }

    #[test]
    fn think_block_at_the_start_is_reasoning() {
        let input = "<think>\nThe user greets me. I should answer briefly.\n</think>\n\nHello! How can I help?";
        assert_eq!(
            every_split(input),
            pair(
                "The user greets me. I should answer briefly.\n",
                "Hello! How can I help?"
            )
        );
    }

    #[test]
    fn thinking_tag_leading_whitespace_and_no_newlines() {
        assert_eq!(
            every_split("  \n<thinking>plan: say hi</thinking>Hi — été"),
            pair("plan: say hi", "Hi — été")
        );
        assert_eq!(
            every_split("<THINK>Überlegung</THINK>Antwort"),
            pair("Überlegung", "Antwort")
        );
    }

    #[test]
    fn empty_blocks_are_dropped() {
        assert_eq!(every_split("<think/>\nAnswer"), pair("", "Answer"));
        assert_eq!(every_split("<think />Answer"), pair("", "Answer"));
        assert_eq!(
            every_split("<think>\n\n</think>\n\nAnswer"),
            pair("", "Answer")
        );
    }

    #[test]
    fn dify_details_wrapper_is_reasoning() {
        let input = "<details style=\"color:gray;background-color: #f8f8f8;padding: 8px;border-radius: 4px;\" open> <summary> Thinking... </summary>Let me count: 2+2=4.\n</details>\n\nIt is 4.";
        assert_eq!(
            every_split(input),
            pair("Let me count: 2+2=4.\n", "It is 4.")
        );
        // Other details blocks are the answer's own.
        let own = "<details><summary>Spoiler</summary>x</details> rest";
        assert_eq!(every_split(own), pair("", own));
    }

    #[test]
    fn only_the_start_counts() {
        let input = "The tag <think> is shown as is.</think>";
        assert_eq!(every_split(input), pair("", input));
        let input = "<b>bold</b> <think>not thinking</think>";
        assert_eq!(every_split(input), pair("", input));
        // A second block after the first is the answer's.
        assert_eq!(
            every_split("<think>a</think><think>b</think>c"),
            pair("a", "<think>b</think>c")
        );
    }

    #[test]
    fn lookalikes_and_fragments_stay_text() {
        for input in [
            "<thin",
            "<think",
            "   ",
            "<thinker>x",
            "<",
            "<details",
            "<detailsx>",
        ] {
            assert_eq!(every_split(input), pair("", input), "{input:?}");
        }
    }

    #[test]
    fn unclosed_thinking_is_all_reasoning() {
        assert_eq!(
            every_split("<think>still thinking </thi"),
            pair("still thinking </thi", "")
        );
    }

    #[test]
    fn holds_only_a_possible_tag() {
        let mut splitter = ThinkSplitter::new();
        let mut out = Vec::new();
        splitter.push("Hello".to_string(), &mut out);
        assert_eq!(out, vec![Piece::Text("Hello".into())]);
        out.clear();
        let mut splitter = ThinkSplitter::new();
        splitter.push("<think>abc </th".to_string(), &mut out);
        assert_eq!(out, vec![Piece::Reasoning("abc ".into())]);
        out.clear();
        splitter.push("ink>\nok".to_string(), &mut out);
        assert_eq!(out, vec![Piece::Text("ok".into())]);
    }

    #[test]
    fn a_long_opening_is_not_held_for_ever() {
        let input = format!("{}x", " ".repeat(MAX_OPENER + 1));
        let mut splitter = ThinkSplitter::new();
        let mut out = Vec::new();
        splitter.push(" ".repeat(MAX_OPENER + 1), &mut out);
        assert_eq!(out, vec![Piece::Text(" ".repeat(MAX_OPENER + 1))]);
        assert_eq!(split(&[&input]), pair("", &input));
    }

    #[test]
    fn decided_the_same_however_cut() {
        // Found by the `think` fuzz target: a long summary whose end came late.
        let long = format!(
            "<details><summary>thinking>{}</summary>x</details>y",
            "a".repeat(80)
        );
        assert_eq!(every_split(&long), pair("", &long));
        // Whitespace past the limit before a tag.
        let spaced = format!("{}<think>a</think>b", " ".repeat(MAX_OPENER));
        assert_eq!(
            split(&[&spaced[..MAX_OPENER - 2], &spaced[MAX_OPENER - 2..]]),
            split(&[&spaced])
        );
    }

    #[test]
    fn answer_part_drops_the_thinking() {
        assert_eq!(answer_part("<think>x</think>\n\nHello"), "Hello");
        assert_eq!(answer_part("Hello <think>"), "Hello <think>");
        assert_eq!(answer_part(""), "");
    }
}
