//! Incremental SSE frame decoder for Dify streams.
//!
//! Written here rather than taken from `eventsource-stream` because that crate, following
//! the browser spec, drops frames without a `data:` line — and Dify's keep-alive is exactly
//! such a frame (`event: ping`), which we must forward to keep client connections open. It
//! also keeps invalid UTF-8 buffered without reporting it and has no frame size cap.
//!
//! Bytes are buffered until a blank line ends a frame, and only complete frames are decoded
//! as UTF-8, so a network read that splits a multi-byte character loses nothing.

use super::types::{DifyEvent, Event, EventParseError};

/// Frames larger than this end the stream with an error instead of growing memory unbounded.
pub const MAX_FRAME_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The joined `data:` lines of a frame.
    Data(String),
    /// A frame without data (`event: ping`): a keep-alive.
    KeepAlive,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("Dify sent bytes that are not valid UTF-8")]
    InvalidUtf8,
    #[error("Dify sent an event larger than {} MiB", MAX_FRAME_BYTES / (1024 * 1024))]
    FrameTooLarge,
    #[error("Dify's stream was cut off in the middle of an event")]
    Truncated,
}

#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the bytes not yet returned as frames; consumed bytes are dropped in one
    /// move when the buffer runs dry, so a read holding many frames costs O(n), not O(n²).
    start: usize,
    /// Bytes of `buf` already searched for a frame end.
    scanned: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if the buffer holds one. Comment-only and empty frames
    /// are skipped.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SseError> {
        loop {
            let Some((end, next)) = self.find_frame_end() else {
                self.buf.drain(..self.start);
                self.scanned -= self.start;
                self.start = 0;
                if self.buf.len() > MAX_FRAME_BYTES {
                    return Err(SseError::FrameTooLarge);
                }
                return Ok(None);
            };
            let frame = decode_frame(&self.buf[self.start..end])?;
            self.start = next;
            self.scanned = next;
            if let Some(frame) = frame {
                return Ok(Some(frame));
            }
        }
    }

    /// Called at end of stream: a last frame missing only its blank line still counts;
    /// anything cut mid-line is reported.
    pub fn finish(&mut self) -> Result<Option<Frame>, SseError> {
        let rest = self.buf.split_off(self.start);
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
        if rest.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        if !rest.ends_with(b"\n") {
            return Err(SseError::Truncated);
        }
        decode_frame(&rest)
    }

    /// Position of the blank line ending the first frame: (end of frame, start of next).
    fn find_frame_end(&mut self) -> Option<(usize, usize)> {
        let buf = &self.buf;
        // Back up: a `\n` or `\n\r` at the end of the last scan may begin a frame end.
        let mut i = self.scanned.saturating_sub(2).max(self.start);
        while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
            let nl = i + off;
            match buf.get(nl + 1) {
                Some(b'\n') => return Some((nl, nl + 2)),
                Some(b'\r') => match buf.get(nl + 2) {
                    Some(b'\n') => return Some((nl, nl + 3)),
                    Some(_) => {}
                    None => break,
                },
                Some(_) => {}
                None => break,
            }
            i = nl + 1;
        }
        self.scanned = buf.len();
        None
    }
}

fn decode_frame(bytes: &[u8]) -> Result<Option<Frame>, SseError> {
    let text = std::str::from_utf8(bytes).map_err(|_| SseError::InvalidUtf8)?;
    let mut data: Option<String> = None;
    let mut any_field = false;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        any_field = true;
        if field == "data" {
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            }
        }
        // `event:`, `id:` and `retry:` carry nothing we need: Dify dispatches on the
        // JSON `event` field.
    }
    Ok(match data {
        Some(d) => Some(Frame::Data(d)),
        None if any_field => Some(Frame::KeepAlive),
        None => None,
    })
}

/// Bytes to typed events: frames, then JSON. Pure, so tests and benchmarks drive it
/// without a server.
#[derive(Debug, Default)]
pub struct EventDecoder {
    frames: FrameDecoder,
}

/// Why the event stream could not be read further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Sse(#[from] SseError),
    #[error(transparent)]
    Event(#[from] EventParseError),
}

impl EventDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes every complete frame in `bytes` (plus what earlier calls left over) into
    /// `out`. After an error nothing more is decoded.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Result<DifyEvent, DecodeError>>) {
        self.frames.push(bytes);
        loop {
            match self.frames.next_frame() {
                Ok(Some(frame)) => {
                    let event = to_event(frame);
                    let failed = event.is_err();
                    out.push(event);
                    if failed {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    out.push(Err(e.into()));
                    return;
                }
            }
        }
    }

    /// End of stream: the last frame, or the error of a cut-off one.
    pub fn finish(&mut self, out: &mut Vec<Result<DifyEvent, DecodeError>>) {
        match self.frames.finish() {
            Ok(Some(frame)) => out.push(to_event(frame)),
            Ok(None) => {}
            Err(e) => out.push(Err(e.into())),
        }
    }
}

fn to_event(frame: Frame) -> Result<DifyEvent, DecodeError> {
    match frame {
        Frame::KeepAlive => Ok(DifyEvent {
            task_id: None,
            conversation_id: None,
            event: Event::Ping,
        }),
        Frame::Data(data) => Ok(DifyEvent::parse(&data)?),
    }
}

/// Decodes a whole transcript at once (tests, benchmarks, fuzzing).
pub fn decode_all(bytes: &[u8]) -> Vec<Result<DifyEvent, DecodeError>> {
    let mut decoder = EventDecoder::new();
    let mut out = Vec::new();
    decoder.push(bytes, &mut out);
    if !matches!(out.last(), Some(Err(_))) {
        decoder.finish(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Result<Vec<Frame>, SseError> {
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c);
            while let Some(f) = d.next_frame()? {
                out.push(f);
            }
        }
        if let Some(f) = d.finish()? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn data_and_ping_frames() {
        let frames =
            decode_all(&[b"event: ping\n\ndata: {\"a\":1}\n\n: comment\n\ndata: x\n\n"]).unwrap();
        assert_eq!(
            frames,
            vec![
                Frame::KeepAlive,
                Frame::Data("{\"a\":1}".into()),
                Frame::Data("x".into())
            ]
        );
    }

    #[test]
    fn crlf_and_multiline_data() {
        let frames = decode_all(&[b"id: 7\r\ndata: a\r\ndata: b\r\n\r\n"]).unwrap();
        assert_eq!(frames, vec![Frame::Data("a\nb".into())]);
    }

    #[test]
    fn split_anywhere_including_inside_utf8() {
        let text = "data: {\"answer\":\"你好 👋\"}\n\nevent: ping\n\ndata: {\"answer\":\"é\"}\n\n";
        let whole = decode_all(&[text.as_bytes()]).unwrap();
        for cut in 0..text.len() {
            let (a, b) = text.as_bytes().split_at(cut);
            assert_eq!(decode_all(&[a, b]).unwrap(), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
        assert_eq!(decode_all(&bytes).unwrap(), whole);
    }

    #[test]
    fn invalid_utf8_is_reported() {
        assert_eq!(
            decode_all(&[b"data: \xff\xfe\n\n"]),
            Err(SseError::InvalidUtf8)
        );
    }

    #[test]
    fn truncated_stream_is_reported_but_missing_blank_line_is_fine() {
        assert_eq!(
            decode_all(&[b"data: {\"a\":1}\n\ndata: {\"b\""]),
            Err(SseError::Truncated)
        );
        assert_eq!(
            decode_all(&[b"data: 1\n"]).unwrap(),
            vec![Frame::Data("1".into())]
        );
        assert_eq!(
            decode_all(&[b"data: 1\n\n\n\n"]).unwrap(),
            vec![Frame::Data("1".into())]
        );
    }

    #[test]
    fn oversized_frame_is_refused() {
        let mut d = FrameDecoder::new();
        let big = vec![b'a'; MAX_FRAME_BYTES + 1];
        d.push(b"data: ");
        d.push(&big);
        assert_eq!(d.next_frame(), Err(SseError::FrameTooLarge));
    }
}
