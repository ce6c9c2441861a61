//! The `multipart/form-data` body of `POST /files/upload`: one `file` part and the `user`
//! field. Written here rather than with reqwest's `multipart` feature, which would bring
//! a MIME-guessing crate for this one small form. Pure.

/// A form ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    pub content_type: String,
    pub body: Vec<u8>,
}

/// The upload form for one file of `user`.
pub fn upload_form(user: &str, filename: &str, mime: &str, bytes: &[u8]) -> Form {
    let mut boundary = new_boundary();
    // A random 32-hex-digit boundary inside the file is all but impossible; checked anyway,
    // since the form would be cut there.
    while contains(bytes, boundary.as_bytes()) || user.contains(&boundary) {
        boundary = new_boundary();
    }
    let mut body = Vec::with_capacity(bytes.len() + 512);
    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    body.extend_from_slice(b"Content-Disposition: form-data; name=\"user\"\r\n\r\n");
    body.extend_from_slice(user.as_bytes());
    body.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
    body.extend_from_slice(
        format!(
            "Content-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\nContent-Type: {}\r\n\r\n",
            quoted(filename),
            quoted(mime)
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Form {
        content_type: format!("multipart/form-data; boundary={boundary}"),
        body,
    }
}

fn new_boundary() -> String {
    format!("opendify-{}", uuid::Uuid::new_v4().simple())
}

/// A header parameter value as browsers write it: quotes and line breaks percent-encoded.
fn quoted(value: &str) -> String {
    value
        .replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_and_the_user() {
        let form = upload_form("alice", "a \"b\".png", "image/png", b"\x89PNG\r\n--x");
        let boundary = form
            .content_type
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap();
        let text = String::from_utf8_lossy(&form.body);
        assert_eq!(
            text,
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nalice\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a %22b%22.png\"\r\nContent-Type: image/png\r\n\r\n\u{fffd}PNG\r\n--x\r\n--{boundary}--\r\n"
            )
        );
    }

    #[test]
    fn boundaries_differ_per_form() {
        let a = upload_form("u", "f", "text/plain", b"x");
        let b = upload_form("u", "f", "text/plain", b"x");
        assert_ne!(a.content_type, b.content_type);
    }
}
