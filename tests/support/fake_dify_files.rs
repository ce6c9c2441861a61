//! Files in the fake Dify: `POST /v1/files/upload` and the `files` of a chat message.
//!
//! - `/files/upload` takes `multipart/form-data` with exactly one `file` part and an
//!   optional `user` field (default `DEFAULT-USER`) and answers **201** with the stored
//!   file (`id`, `name`, `size`, `extension`, `mime_type`, ...). Refusals as Dify's:
//!   no `file` part → 400 `no_file_uploaded`, more than one → 400 `too_many_files`, no
//!   filename → 400 `filename_not_exists_error`, a filename with `/\:*?"<>|` → 400
//!   `invalid_param`, no MIME type → 415 `unsupported_file_type`, over the size limit of
//!   its extension (image 10 MB, video 100, audio 50, other 15) → 413 `file_too_large`
//!   with an empty message.
//! - `files` in `/chat-messages`: every entry needs a known `type` and
//!   `transfer_method`; `remote_url` needs an http(s) `url` ("Invalid file url");
//!   `local_file` needs the id of a file uploaded with the same app key **and the same
//!   `user`** (2026 Dify's file-access scope; "Invalid upload file id" otherwise), whose
//!   type matches the declared one unless that is `custom`.
//! - A message with files answers its text chunks as `message_file` events carrying
//!   `answer` (Dify 1.12.x, PR #29837), unless [`FakeDify::set_message_file_quirk`] turned
//!   that off (the `message` events of other versions).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{
    FakeDify, JSON_CONTENT_TYPE, MSG_BAD_TOKEN, Shared, error_response, header_str, new_uuid,
    normalize_uuid, parse_authorization, plain_response, unauthorized,
};

const MIB: usize = 1024 * 1024;

/// One file stored by `/files/upload`.
#[derive(Clone, Debug)]
pub struct Upload {
    pub id: String,
    /// The app key it was uploaded with.
    pub key: String,
    pub user: String,
    pub filename: String,
    pub mime: String,
    pub bytes: Vec<u8>,
}

/// The fake's file state (a field of its shared data).
#[derive(Default)]
pub(super) struct FileStore {
    uploads: Vec<Upload>,
    /// Chunks as `message` events even with files (Dify other than 1.12.x).
    no_quirk: bool,
    /// See [`FakeDify::refuse_uploads`].
    refusal: Option<(u16, String, String)>,
}

impl FakeDify {
    /// Every accepted upload, in order.
    pub fn uploads(&self) -> Vec<Upload> {
        self.shared.lock().files.uploads.clone()
    }

    /// `false`: a message with files streams its text as `message` events, as Dify other
    /// than 1.12.x does. Default `true` (the 1.12.x `message_file` quirk).
    pub fn set_message_file_quirk(&self, on: bool) {
        self.shared.lock().files.no_quirk = !on;
    }
}

impl FakeDify {
    /// Every later upload (with a valid key) gets this Dify error, as a Dify whose own
    /// limits or settings differ would answer.
    pub fn refuse_uploads(&self, status: u16, code: &str, message: &str) {
        self.shared.lock().files.refusal = Some((status, code.into(), message.into()));
    }
}

/// The event name of a message's text chunks.
pub(super) fn text_event(st: &Shared, has_files: bool) -> &'static str {
    if has_files && !st.lock().files.no_quirk {
        "message_file"
    } else {
        "message"
    }
}

/// `POST /v1/files/upload`.
pub(super) async fn upload(
    State(st): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = match parse_authorization(header_str(&headers, header::AUTHORIZATION).as_deref()) {
        Ok(key) if st.knows_key(&key) => key,
        Ok(_) => return unauthorized(MSG_BAD_TOKEN),
        Err(msg) => return unauthorized(msg),
    };
    if let Some((status, code, message)) = st.lock().files.refusal.clone() {
        return error_response(status, &code, &message);
    }
    let parts = header_str(&headers, header::CONTENT_TYPE)
        .and_then(|ct| boundary(&ct))
        .map(|b| parse_multipart(&body, &b))
        .unwrap_or_default();
    let user = parts
        .iter()
        .find(|p| p.name == "user" && p.filename.is_none())
        .map(|p| String::from_utf8_lossy(&p.data).into_owned())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "DEFAULT-USER".to_string());
    let files: Vec<&Part> = parts.iter().filter(|p| p.filename.is_some()).collect();
    let Some(file) = files.iter().find(|p| p.name == "file") else {
        return error_response(400, "no_file_uploaded", "Please upload your file.");
    };
    if files.len() > 1 {
        return error_response(400, "too_many_files", "Only one file is allowed.");
    }
    let filename = file.filename.clone().unwrap_or_default();
    if filename.is_empty() {
        let msg = "The specified filename does not exist.";
        return error_response(400, "filename_not_exists_error", msg);
    }
    if filename.contains(['/', '\\', ':', '*', '?', '"', '<', '>', '|']) {
        let msg = "Filename contains invalid characters.";
        return error_response(400, "invalid_param", msg);
    }
    let Some(mime) = file.content_type.clone().filter(|m| !m.is_empty()) else {
        return error_response(415, "unsupported_file_type", "File type not allowed.");
    };
    let extension = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    if file.data.len() > size_limit(&extension) {
        return error_response(413, "file_too_large", "");
    }
    let id = new_uuid();
    let size = file.data.len();
    st.lock().files.uploads.push(Upload {
        id: id.clone(),
        key,
        user: user.clone(),
        filename: filename.clone(),
        mime: mime.clone(),
        bytes: file.data.clone(),
    });
    let body = json!({
        "id": id, "name": filename, "size": size, "extension": extension,
        "mime_type": mime, "created_by": new_uuid(), "created_at": 1_784_212_345,
        "preview_url": null, "source_url": format!("/files/{id}/file-preview"),
        "original_url": null, "user_id": null, "tenant_id": new_uuid(),
        "conversation_id": null, "file_key": format!("upload_files/{id}.{extension}"),
        "reference": null,
    });
    plain_response(201, JSON_CONTENT_TYPE, body.to_string())
}

/// Checks `files` of a chat message. `Ok(true)` when it attaches any.
pub(super) fn check_chat_files(
    st: &Shared,
    key: &str,
    user: &str,
    map: &Map<String, Value>,
) -> Result<bool, Box<Response>> {
    let files = match map.get("files") {
        Some(Value::Array(files)) if !files.is_empty() => files,
        _ => return Ok(false),
    };
    let invalid = |msg: &str| Box::new(error_response(400, "invalid_param", msg));
    for f in files {
        let kind = f.get("type").and_then(Value::as_str).unwrap_or("");
        if !["image", "document", "audio", "video", "custom"].contains(&kind) {
            return Err(invalid(&format!("'{kind}' is not a valid FileType")));
        }
        match f.get("transfer_method").and_then(Value::as_str) {
            Some("remote_url") => {
                let url = f.get("url").and_then(Value::as_str).unwrap_or("");
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid("Invalid file url"));
                }
            }
            Some("local_file") => {
                let id = f
                    .get("upload_file_id")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let Some(id) = normalize_uuid(id) else {
                    return Err(invalid("Invalid upload file id format"));
                };
                let d = st.lock();
                let Some(upload) = d
                    .files
                    .uploads
                    .iter()
                    .find(|u| u.id == id && u.key == key && u.user == user)
                else {
                    return Err(invalid("Invalid upload file id"));
                };
                let extension = upload
                    .filename
                    .rsplit_once('.')
                    .map(|(_, e)| e)
                    .unwrap_or("");
                if kind != "custom" && detected_type(extension) != kind {
                    return Err(invalid(
                        "Detected file type does not match the specified type. Please verify the file.",
                    ));
                }
            }
            _ => return Err(invalid("transfer_method is required")),
        }
    }
    Ok(true)
}

/// Dify's type of a file extension.
fn detected_type(extension: &str) -> &'static str {
    match extension.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" | "png" | "webp" | "gif" | "svg" => "image",
        "mp4" | "mov" | "mpeg" | "webm" => "video",
        "mp3" | "m4a" | "wav" | "amr" | "mpga" => "audio",
        "txt" | "markdown" | "md" | "mdx" | "pdf" | "html" | "htm" | "xlsx" | "xls" | "vtt"
        | "properties" | "doc" | "docx" | "csv" | "eml" | "msg" | "pptx" | "xml" | "epub"
        | "ppt" => "document",
        _ => "custom",
    }
}

fn size_limit(extension: &str) -> usize {
    match detected_type(extension) {
        "image" => 10 * MIB,
        "video" => 100 * MIB,
        "audio" => 50 * MIB,
        _ => 15 * MIB,
    }
}

/// One part of a multipart form.
struct Part {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

/// The `boundary` parameter of a `multipart/form-data` content type.
fn boundary(content_type: &str) -> Option<String> {
    let mut fields = content_type.split(';').map(str::trim);
    if !fields.next()?.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    fields
        .filter_map(|f| f.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
}

/// The parts of a multipart body, as werkzeug reads them (enough for one client).
fn parse_multipart(body: &[u8], boundary: &str) -> Vec<Part> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    let Some(start) = find(rest, delimiter.as_bytes()) else {
        return parts;
    };
    rest = &rest[start + delimiter.len()..];
    loop {
        if rest.starts_with(b"--") {
            break;
        }
        let Some(after_crlf) = rest.strip_prefix(b"\r\n") else {
            break;
        };
        let Some(end) = find(after_crlf, format!("\r\n{delimiter}").as_bytes()) else {
            break;
        };
        let segment = &after_crlf[..end];
        rest = &after_crlf[end + 2 + delimiter.len()..];
        let Some(split) = find(segment, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&segment[..split]);
        let data = segment[split + 4..].to_vec();
        let mut part = Part {
            name: String::new(),
            filename: None,
            content_type: None,
            data,
        };
        for line in head.split("\r\n") {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("content-type") {
                part.content_type = Some(value.trim().to_string());
            } else if name.trim().eq_ignore_ascii_case("content-disposition") {
                for param in value.split(';').map(str::trim) {
                    if let Some((k, v)) = param.split_once('=') {
                        let v = v.trim_matches('"').replace("%22", "\"");
                        match k.trim() {
                            "name" => part.name = v,
                            "filename" => part.filename = Some(v),
                            _ => {}
                        }
                    }
                }
            }
        }
        parts.push(part);
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
