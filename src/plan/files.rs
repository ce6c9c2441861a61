//! Files in a request → files for Dify. Pure: the parts of the current user message are
//! checked (type, size, count) and decoded here; the route uploads the inline ones
//! (`POST /files/upload`) and the turn then refers to them by upload id. Files of earlier
//! messages become a short placeholder in their text ([`placeholder`]) and are never
//! sent again: Dify's conversation holds them already, or the folded history names them.

use serde_json::Value;

use crate::dify::parameters::{FileUpload, FormField};
use crate::dify::types::DifyFile;
use crate::error::ApiError;

/// Most files one message may attach.
pub const MAX_FILES: usize = 10;

const MIB: usize = 1024 * 1024;

/// Dify's file types (`files[].type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileType {
    Image,
    Document,
    Audio,
    Video,
    Custom,
}

impl FileType {
    pub fn as_str(self) -> &'static str {
        match self {
            FileType::Image => "image",
            FileType::Document => "document",
            FileType::Audio => "audio",
            FileType::Video => "video",
            FileType::Custom => "custom",
        }
    }

    /// Dify's default upload limit for the type (`UPLOAD_*_FILE_SIZE_LIMIT`): a larger
    /// file is refused here rather than sent and refused there.
    pub fn max_bytes(self) -> usize {
        match self {
            FileType::Image => 10 * MIB,
            FileType::Audio => 50 * MIB,
            FileType::Video => 100 * MIB,
            FileType::Document | FileType::Custom => 15 * MIB,
        }
    }

    /// For messages: "images", "documents", ...
    fn plural(self) -> &'static str {
        match self {
            FileType::Image => "images",
            FileType::Document => "documents",
            FileType::Audio => "audio files",
            FileType::Video => "videos",
            FileType::Custom => "other files",
        }
    }

    /// For messages: "an image", "a document", ...
    fn noun(self) -> &'static str {
        match self {
            FileType::Image => "an image",
            FileType::Document => "a document",
            FileType::Audio => "an audio file",
            FileType::Video => "a video",
            FileType::Custom => "a file",
        }
    }
}

/// One file of the current message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The request field it came from (`messages[3].content[1]`), named in errors.
    pub part: String,
    pub kind: FileType,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Dify fetches it (`transfer_method: remote_url`); `param` names the URL's field
    /// (`messages[0].content[1].image_url`), for a refusal ([`super::remote_url`]).
    Remote { url: String, param: String },
    /// Sent inline: to be uploaded before the chat message.
    Inline(Inline),
    /// Uploaded: Dify's upload id (`transfer_method: local_file`).
    Uploaded(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inline {
    pub filename: String,
    pub mime: String,
    pub bytes: Vec<u8>,
}

impl Attachment {
    /// The file as `/chat-messages` takes it; `None` while it is still to be uploaded.
    pub fn dify_file(&self) -> Option<DifyFile> {
        let kind = self.kind.as_str();
        match &self.source {
            Source::Remote { url, .. } => Some(DifyFile::remote(kind, url.clone())),
            Source::Uploaded(id) => Some(DifyFile::uploaded(kind, id.clone())),
            Source::Inline(_) => None,
        }
    }
}

/// The text that stands for a file part in a message's text, or `None` if the part is not
/// a file. The same for the current message and, on later turns, for the same message in
/// the history: the conversation's digest sees the same text on both (so it continues),
/// and a folded history says which files the user had sent. Derived from the part as the
/// client sent it, valid or not, so both sides always agree.
pub fn placeholder(kind: &str, part: &Value) -> Option<String> {
    let filename = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(|name| name.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|name| !name.is_empty())
    };
    Some(match kind {
        "image_url" | "input_image" => "[image]".to_string(),
        "input_audio" => "[audio]".to_string(),
        "file" => match filename(part.get("file").and_then(|f| f.get("filename"))) {
            Some(name) => format!("[file: {name}]"),
            None => "[file]".to_string(),
        },
        "input_file" => match filename(part.get("filename")) {
            Some(name) => format!("[file: {name}]"),
            None => "[file]".to_string(),
        },
        _ => return None,
    })
}

/// The files of a message's content parts, in order (chat completions: `image_url`,
/// `file`, `input_audio`; Responses: `input_image`, `input_file`). `param` names the
/// content (`messages[3].content`).
pub fn attachments(content: Option<&Value>, param: &str) -> Result<Vec<Attachment>, ApiError> {
    let Some(Value::Array(parts)) = content else {
        return Ok(Vec::new());
    };
    let mut files = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let Some(kind) = part.get("type").and_then(Value::as_str) else {
            continue;
        };
        if placeholder(kind, part).is_none() {
            continue;
        }
        let param = format!("{param}[{j}]");
        if files.len() == MAX_FILES {
            return Err(ApiError::bad_request(
                format!("{param}: a message may attach at most {MAX_FILES} files."),
                Some(param),
            ));
        }
        files.push(attachment(kind, part, param)?);
    }
    Ok(files)
}

/// Refuses inline files that together exceed `limit` bytes (`MAX_REQUEST_BYTES`).
/// Refuses files the app does not take: Dify drops files silently when the app's file
/// upload is off (or does not allow the type), so the answer would ignore them.
/// `upload` is the app's `/parameters.file_upload`; the legacy `image` block still
/// enables images.
pub fn check_accepted(
    model: &str,
    files: &[Attachment],
    upload: &FileUpload,
) -> Result<(), ApiError> {
    let accepts = |kind: FileType| {
        let general = upload.enabled
            && (upload.allowed_file_types.is_empty()
                || upload
                    .allowed_file_types
                    .iter()
                    .any(|t| t == kind.as_str() || t == "custom"));
        general || (kind == FileType::Image && upload.image.enabled)
    };
    let Some(refused) = files.iter().find(|f| !accepts(f.kind)) else {
        return Ok(());
    };
    let what = match refused.kind {
        FileType::Image => "images",
        FileType::Document => "documents",
        FileType::Audio => "audio files",
        FileType::Video => "video files",
        FileType::Custom => "files of this type",
    };
    Err(ApiError::bad_request(
        format!(
            "Model `{model}` does not accept {what}: the Dify app's file upload is off or does not allow them, and Dify would answer without them. Turn on file upload (for {what}) in the app's features, or send text only."
        ),
        Some(refused.part.clone()),
    ))
}

/// A workflow takes files as an input variable, not as `files`: its form's only `file`
/// (one file) or `file-list` variable.
pub fn workflow_file_variable<'a>(
    model: &str,
    form: &'a [FormField],
    files: &[Attachment],
) -> Result<&'a FormField, ApiError> {
    let param = files.first().map(|f| f.part.clone());
    let mut candidates = form
        .iter()
        .filter(|f| matches!(f.kind.as_str(), "file" | "file-list"));
    let field = match (candidates.next(), candidates.next()) {
        (Some(only), None) => only,
        (None, _) => {
            return Err(ApiError::bad_request(
                format!(
                    "Model `{model}` is a Dify workflow with no file input: it cannot take the attached files. Send text only, or add a file variable to the workflow's start node."
                ),
                param,
            ));
        }
        (Some(_), Some(_)) => {
            let names: Vec<&str> = form
                .iter()
                .filter(|f| matches!(f.kind.as_str(), "file" | "file-list"))
                .map(|f| f.variable.as_str())
                .collect();
            return Err(ApiError::bad_request(
                format!(
                    "Model `{model}` is a Dify workflow with several file inputs ({}): the proxy cannot tell which one the attached files are for. Pass them as upload ids in `inputs` instead.",
                    names.join(", ")
                ),
                param,
            ));
        }
    };
    if field.kind == "file" && files.len() > 1 {
        return Err(ApiError::bad_request(
            format!(
                "Model `{model}` is a Dify workflow whose file input `{}` takes one file; this message attaches {}.",
                field.variable,
                files.len()
            ),
            files.get(1).map(|f| f.part.clone()),
        ));
    }
    Ok(field)
}

pub fn check_total(files: &[Attachment], limit: usize) -> Result<(), ApiError> {
    let mut total = 0usize;
    for f in files {
        if let Source::Inline(inline) = &f.source {
            total = total.saturating_add(inline.bytes.len());
            if total > limit {
                return Err(ApiError::FileTooLarge {
                    message: format!(
                        "{}: the message's files add up to more than {limit} bytes, the most one request may carry.",
                        f.part
                    ),
                    param: f.part.clone(),
                });
            }
        }
    }
    Ok(())
}

fn attachment(kind: &str, part: &Value, param: String) -> Result<Attachment, ApiError> {
    match kind {
        // Chat completions: {"image_url": {"url": ...}} (a bare string from some clients).
        "image_url" => {
            let url = match part.get("image_url") {
                Some(Value::Object(o)) => o.get("url").and_then(Value::as_str),
                Some(Value::String(s)) => Some(s.as_str()),
                _ => None,
            };
            let Some(url) = url else {
                return Err(bad(
                    format!("{param} is an `image_url` part without a string `image_url.url`."),
                    format!("{param}.image_url.url"),
                ));
            };
            image(url, param)
        }
        // Responses: {"image_url": "..."} or {"file_id": "..."}.
        "input_image" => match (part.get("image_url"), part.get("file_id")) {
            (Some(Value::String(url)), _) => image(url, param),
            (_, Some(Value::String(_))) => Err(file_id_refused(&param)),
            _ => Err(bad(
                format!("{param} is an `input_image` part without a string `image_url`."),
                format!("{param}.image_url"),
            )),
        },
        "file" => {
            let file = part.get("file").unwrap_or(&Value::Null);
            inline_or_url(file, None, &param, &format!("{param}.file"))
        }
        "input_file" => inline_or_url(part, part.get("file_url"), &param, &param),
        "input_audio" => audio(part, param),
        _ => Err(bad(
            format!("{param} has type `{kind}`, which is not a file."),
            format!("{param}.type"),
        )),
    }
}

/// `file_data` (a data: URI) with an optional `filename`; or `file_url` (Responses);
/// `file_id` is refused.
fn inline_or_url(
    fields: &Value,
    file_url: Option<&Value>,
    param: &str,
    fields_param: &str,
) -> Result<Attachment, ApiError> {
    let filename = fields.get("filename").and_then(Value::as_str);
    match (fields.get("file_data"), file_url, fields.get("file_id")) {
        (Some(Value::String(data)), _, _) => {
            let uri = data_uri(data, &format!("{fields_param}.file_data"))?;
            let name_ext = filename.and_then(extension);
            let (kind, ext) = by_mime(&uri.mime)
                .or_else(|| name_ext.as_deref().and_then(by_extension))
                .unwrap_or_else(|| (FileType::Custom, name_ext.clone().unwrap_or("bin".into())));
            let bytes = decode_checked(&uri, kind, param)?;
            Ok(Attachment {
                part: param.to_string(),
                kind,
                source: Source::Inline(Inline {
                    filename: upload_name(filename, kind, &ext),
                    mime: uri.mime,
                    bytes,
                }),
            })
        }
        (_, Some(Value::String(url)), _) => {
            let url_param = format!("{param}.file_url");
            let url = remote_url(url, &url_param)?;
            // An unknown type goes as `custom`, which Dify resolves from what it fetches.
            let kind = url_extension(&url)
                .and_then(|e| by_extension(&e))
                .map_or(FileType::Custom, |(kind, _)| kind);
            Ok(Attachment {
                part: param.to_string(),
                kind,
                source: Source::Remote {
                    url,
                    param: url_param,
                },
            })
        }
        (_, _, Some(Value::String(_))) => Err(file_id_refused(fields_param)),
        _ => Err(bad(
            format!(
                "{fields_param} needs `file_data`: the file as a data: URI (data:application/pdf;base64,...)."
            ),
            format!("{fields_param}.file_data"),
        )),
    }
}

fn image(url: &str, param: String) -> Result<Attachment, ApiError> {
    if !is_data_uri(url) {
        let url = remote_url(url, &param)?;
        return Ok(Attachment {
            source: Source::Remote {
                url,
                param: format!("{param}.image_url"),
            },
            part: param,
            kind: FileType::Image,
        });
    }
    let uri = data_uri(url, &param)?;
    let ext = match by_mime(&uri.mime) {
        Some((FileType::Image, ext)) => ext,
        _ => {
            return Err(ApiError::UnsupportedFile {
                message: format!(
                    "{param} is `{}`, which Dify does not take as an image: send PNG, JPEG, GIF, WebP or SVG (other files as `file` parts).",
                    uri.mime
                ),
                param,
            });
        }
    };
    let bytes = decode_checked(&uri, FileType::Image, &param)?;
    Ok(Attachment {
        part: param,
        kind: FileType::Image,
        source: Source::Inline(Inline {
            filename: format!("image.{ext}"),
            mime: uri.mime,
            bytes,
        }),
    })
}

/// `{"input_audio": {"data": "<base64>", "format": "mp3" | "wav"}}`.
fn audio(part: &Value, param: String) -> Result<Attachment, ApiError> {
    let fields = part.get("input_audio").unwrap_or(&Value::Null);
    let Some(data) = fields.get("data").and_then(Value::as_str) else {
        return Err(bad(
            format!("{param} is an `input_audio` part without a string `input_audio.data`."),
            format!("{param}.input_audio.data"),
        ));
    };
    let format = fields.get("format").and_then(Value::as_str).unwrap_or("");
    let mime = match format {
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        other => {
            return Err(ApiError::UnsupportedFile {
                message: format!("{param} has audio format `{other}`: send `mp3` or `wav`."),
                param: format!("{param}.input_audio.format"),
            });
        }
    };
    let uri = DataUri {
        mime: mime.to_string(),
        base64: data,
        param: format!("{param}.input_audio.data"),
    };
    let bytes = decode_checked(&uri, FileType::Audio, &param)?;
    Ok(Attachment {
        part: param,
        kind: FileType::Audio,
        source: Source::Inline(Inline {
            filename: format!("audio.{format}"),
            mime: mime.to_string(),
            bytes,
        }),
    })
}

fn file_id_refused(param: &str) -> ApiError {
    bad(
        format!(
            "{param}.file_id names a file uploaded to OpenAI, which this proxy cannot read: send the file inline as a data: URI (`file_data`, or `image_url` for images)."
        ),
        format!("{param}.file_id"),
    )
}

fn bad(message: String, param: String) -> ApiError {
    ApiError::bad_request(message, Some(param))
}

fn is_data_uri(s: &str) -> bool {
    s.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("data:"))
}

/// An `http(s)` URL with a host, as Dify fetches it.
fn remote_url(raw: &str, param: &str) -> Result<String, ApiError> {
    match url::Url::parse(raw.trim()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(u.into()),
        _ => Err(bad(
            format!("{param} must be an http(s) URL that Dify can fetch, or a base64 data: URI."),
            param.to_string(),
        )),
    }
}

struct DataUri<'a> {
    /// Lower-case, without parameters.
    mime: String,
    base64: &'a str,
    /// Named when the data is not base64.
    param: String,
}

/// `data:<mime>[;param=value]*;base64,<data>`.
fn data_uri<'a>(raw: &'a str, param: &str) -> Result<DataUri<'a>, ApiError> {
    let malformed = || {
        bad(
            format!("{param} is not a base64 data: URI like data:image/png;base64,iVBORw0KGgo..."),
            param.to_string(),
        )
    };
    let rest = raw
        .get(5..)
        .filter(|_| is_data_uri(raw))
        .ok_or_else(malformed)?;
    let (head, data) = rest.split_once(',').ok_or_else(malformed)?;
    let mut fields = head.split(';').map(str::trim);
    let mime = fields.next().unwrap_or("").to_ascii_lowercase();
    let base64 = fields.any(|f| f.eq_ignore_ascii_case("base64"));
    let valid_mime = mime.split_once('/').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && !mime.contains(char::is_whitespace)
    });
    if !base64 || !valid_mime {
        return Err(malformed());
    }
    Ok(DataUri {
        mime,
        base64: data,
        param: param.to_string(),
    })
}

/// Decodes, then refuses a file over its type's limit.
fn decode_checked(uri: &DataUri, kind: FileType, param: &str) -> Result<Vec<u8>, ApiError> {
    // The decoded size is known before decoding, within the padding: refuse at once
    // rather than allocate for a file that is too large anyway.
    let estimate = uri.base64.len() / 4 * 3;
    let limit = kind.max_bytes();
    let too_large = |size: usize| ApiError::FileTooLarge {
        message: format!(
            "{param} is {} of {size} bytes; Dify accepts at most {} MiB ({limit} bytes) for {}.",
            kind.noun(),
            limit / MIB,
            kind.plural(),
        ),
        param: param.to_string(),
    };
    if estimate > limit + 2 && !uri.base64.contains(|c: char| c.is_ascii_whitespace()) {
        return Err(too_large(estimate));
    }
    let bytes = decode_base64(uri.base64).ok_or_else(|| {
        bad(
            format!("{} is not valid base64.", uri.param),
            uri.param.clone(),
        )
    })?;
    if bytes.is_empty() {
        return Err(bad(format!("{} is empty.", uri.param), uri.param.clone()));
    }
    if bytes.len() > limit {
        return Err(too_large(bytes.len()));
    }
    Ok(bytes)
}

/// Standard or URL-safe base64, padding optional, ASCII whitespace ignored (line-wrapped
/// encoders). `None` for anything else.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 3);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut padding = 0usize;
    let mut symbols = 0usize;
    for b in text.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => {
                padding += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return None,
        };
        // Data after padding.
        if padding > 0 {
            return None;
        }
        symbols += 1;
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone symbol holds no whole byte; padding only completes the last quantum.
    let rest = symbols % 4;
    if rest == 1 || padding > 2 || (padding > 0 && !(rest + padding).is_multiple_of(4)) {
        return None;
    }
    // Leftover bits must be zero (canonical encoding).
    if acc != 0 {
        return None;
    }
    Some(out)
}

/// The Dify type and the extension for a MIME type Dify knows.
fn by_mime(mime: &str) -> Option<(FileType, String)> {
    use FileType::*;
    let (kind, ext) = match mime {
        "image/png" => (Image, "png"),
        "image/jpeg" | "image/jpg" | "image/pjpeg" => (Image, "jpg"),
        "image/gif" => (Image, "gif"),
        "image/webp" => (Image, "webp"),
        "image/svg+xml" => (Image, "svg"),
        "audio/mpeg" | "audio/mp3" => (Audio, "mp3"),
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => (Audio, "wav"),
        "audio/mp4" | "audio/x-m4a" | "audio/m4a" => (Audio, "m4a"),
        "audio/amr" => (Audio, "amr"),
        "video/mp4" => (Video, "mp4"),
        "video/quicktime" => (Video, "mov"),
        "video/mpeg" => (Video, "mpeg"),
        "video/webm" => (Video, "webm"),
        "application/pdf" => (Document, "pdf"),
        "text/plain" => (Document, "txt"),
        "text/markdown" | "text/x-markdown" => (Document, "md"),
        "text/html" => (Document, "html"),
        "text/csv" => (Document, "csv"),
        "text/xml" | "application/xml" => (Document, "xml"),
        "application/msword" => (Document, "doc"),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => {
            (Document, "docx")
        }
        "application/vnd.ms-excel" => (Document, "xls"),
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => (Document, "xlsx"),
        "application/vnd.ms-powerpoint" => (Document, "ppt"),
        "application/vnd.openxmlformats-officedocument.presentationml.presentation" => {
            (Document, "pptx")
        }
        "application/epub+zip" => (Document, "epub"),
        "message/rfc822" => (Document, "eml"),
        _ => return None,
    };
    Some((kind, ext.to_string()))
}

/// The Dify type of a file extension Dify knows (lower-case, without the dot).
fn by_extension(ext: &str) -> Option<(FileType, String)> {
    use FileType::*;
    let kind = match ext {
        "jpg" | "jpeg" | "png" | "webp" | "gif" | "svg" => Image,
        "mp3" | "m4a" | "wav" | "amr" | "mpga" => Audio,
        "mp4" | "mov" | "mpeg" | "webm" => Video,
        "txt" | "markdown" | "md" | "mdx" | "pdf" | "html" | "htm" | "xlsx" | "xls" | "vtt"
        | "properties" | "doc" | "docx" | "csv" | "eml" | "msg" | "pptx" | "xml" | "epub"
        | "ppt" => Document,
        _ => return None,
    };
    Some((kind, ext.to_string()))
}

/// A filename's extension, lower-case, if it has a plausible one.
fn extension(name: &str) -> Option<String> {
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty()
        && (1..=10).contains(&ext.len())
        && ext.chars().all(|c| c.is_ascii_alphanumeric()))
    .then(|| ext.to_ascii_lowercase())
}

fn url_extension(url: &str) -> Option<String> {
    let path = url::Url::parse(url).ok()?.path().to_string();
    extension(path.rsplit('/').next()?)
}

/// The name the file is uploaded under: the client's, without the characters Dify
/// refuses in filenames, ending in an extension of its type (Dify sorts files by it).
fn upload_name(given: Option<&str>, kind: FileType, ext: &str) -> String {
    let cleaned: String = given
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_control() || "/\\:*?\"<>|".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        return format!("file.{ext}");
    }
    let fits = extension(cleaned).is_some_and(|e| {
        e == ext || (kind != FileType::Custom && by_extension(&e).is_some_and(|(k, _)| k == kind))
    });
    if fits {
        cleaned.to_string()
    } else {
        format!("{cleaned}.{ext}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PNG_1X1: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

    fn parts(v: Value) -> Result<Vec<Attachment>, ApiError> {
        attachments(Some(&v), "messages[3].content")
    }

    fn one(part: Value) -> Result<Attachment, ApiError> {
        parts(json!([{"type":"text","text":"x"}, part])).map(|mut v| v.remove(0))
    }

    fn refusal(part: Value) -> (&'static str, String, Option<String>) {
        match one(part) {
            Err(ApiError::BadRequest { message, param }) => ("400", message, param),
            Err(ApiError::FileTooLarge { message, param }) => ("413", message, Some(param)),
            Err(ApiError::UnsupportedFile { message, param }) => ("415", message, Some(param)),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn base64_round_trips_and_rejects_garbage() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVs\nbG8=\n").unwrap(), b"hello");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("-_-_").unwrap(), vec![0xfb, 0xff, 0xbf]);
        assert_eq!(decode_base64("+/+/").unwrap(), vec![0xfb, 0xff, 0xbf]);
        for bad in [
            "a",
            "aGVsbG8==",
            "aGVs=bG8",
            "aGVsbG8===",
            "aGV*",
            "aGVsbG9=",
            "ä",
        ] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
        let png = decode_base64(PNG_1X1).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }

    #[test]
    fn an_image_url_is_fetched_by_dify() {
        let a = one(json!({"type":"image_url","image_url":{"url":"https://example.com/cat.png","detail":"high"}}))
            .unwrap();
        assert_eq!(a.part, "messages[3].content[1]");
        assert_eq!(a.kind, FileType::Image);
        assert_eq!(
            a.source,
            Source::Remote {
                url: "https://example.com/cat.png".into(),
                param: "messages[3].content[1].image_url".into()
            }
        );
        assert_eq!(
            serde_json::to_value(a.dify_file().unwrap()).unwrap(),
            json!({"type":"image","transfer_method":"remote_url","url":"https://example.com/cat.png"})
        );
    }

    #[test]
    fn a_data_uri_image_is_decoded_for_upload() {
        let a = one(json!({"type":"image_url","image_url":{"url":format!("data:image/png;base64,{PNG_1X1}")}}))
            .unwrap();
        let Source::Inline(inline) = &a.source else {
            panic!("{a:?}")
        };
        assert_eq!(inline.filename, "image.png");
        assert_eq!(inline.mime, "image/png");
        assert_eq!(&inline.bytes[1..4], b"PNG");
        assert_eq!(a.dify_file(), None, "not sendable before the upload");
        let uploaded = Attachment {
            source: Source::Uploaded("u-1".into()),
            ..a
        };
        assert_eq!(
            serde_json::to_value(uploaded.dify_file().unwrap()).unwrap(),
            json!({"type":"image","transfer_method":"local_file","upload_file_id":"u-1"})
        );
    }

    #[test]
    fn file_parts_take_their_type_from_the_mime_type() {
        let pdf = one(json!({"type":"file","file":{"filename":"report.pdf","file_data":"data:application/pdf;base64,JVBERi0xLjQ="}}))
            .unwrap();
        assert_eq!(pdf.kind, FileType::Document);
        let Source::Inline(inline) = &pdf.source else {
            panic!()
        };
        assert_eq!(inline.filename, "report.pdf");
        assert_eq!(inline.bytes, b"%PDF-1.4");

        let cases = [
            ("notes", "text/plain", FileType::Document, "notes.txt"),
            ("a:b?.wav", "audio/wav", FileType::Audio, "a_b_.wav"),
            ("clip.MP4", "video/mp4", FileType::Video, "clip.MP4"),
            ("photo.jpeg", "image/jpeg", FileType::Image, "photo.jpeg"),
            ("photo.gif", "image/png", FileType::Image, "photo.gif"),
            ("scan.pdf", "image/png", FileType::Image, "scan.pdf.png"),
            (
                "data.parquet",
                "application/octet-stream",
                FileType::Custom,
                "data.parquet",
            ),
            (
                "sheet.xlsx",
                "application/octet-stream",
                FileType::Document,
                "sheet.xlsx",
            ),
            ("", "application/x-thing", FileType::Custom, "file.bin"),
        ];
        for (name, mime, kind, upload) in cases {
            let a = one(json!({"type":"file","file":{"filename":name,"file_data":format!("data:{mime};base64,aGk=")}}))
                .unwrap();
            assert_eq!(a.kind, kind, "{name} {mime}");
            let Source::Inline(inline) = a.source else {
                panic!()
            };
            assert_eq!(inline.filename, upload, "{name} {mime}");
        }
    }

    #[test]
    fn responses_parts_become_the_same_files() {
        let img =
            one(json!({"type":"input_image","image_url":"https://x.test/a.webp","detail":"auto"}))
                .unwrap();
        assert!(
            matches!(&img.source, Source::Remote { url, .. } if url == "https://x.test/a.webp")
        );
        let doc = one(json!({"type":"input_file","filename":"r.pdf","file_data":"data:application/pdf;base64,JVBERi0xLjQ="})).unwrap();
        assert_eq!(doc.kind, FileType::Document);
        let url = one(json!({"type":"input_file","file_url":"https://x.test/files/r.PDF?sig=1"}))
            .unwrap();
        assert_eq!(
            (url.kind, url.source),
            (
                FileType::Document,
                Source::Remote {
                    url: "https://x.test/files/r.PDF?sig=1".into(),
                    param: "messages[3].content[1].file_url".into()
                }
            )
        );
        let unknown =
            one(json!({"type":"input_file","file_url":"https://x.test/download"})).unwrap();
        assert_eq!(unknown.kind, FileType::Custom);
        let audio = one(json!({"type":"input_audio","input_audio":{"data":"aGk=","format":"mp3"}}))
            .unwrap();
        assert_eq!(audio.kind, FileType::Audio);
    }

    #[test]
    fn refusals_name_the_part() {
        let too_big = format!(
            "data:image/png;base64,{}",
            "A".repeat((10 * MIB + 3) / 3 * 4)
        );
        let (status, msg, param) = refusal(json!({"type":"image_url","image_url":{"url":too_big}}));
        assert_eq!(
            (status, param.as_deref()),
            ("413", Some("messages[3].content[1]"))
        );
        assert!(
            msg.starts_with("messages[3].content[1] is an image of "),
            "{msg}"
        );
        assert!(msg.contains("10 MiB"), "{msg}");

        let cases = [
            (
                json!({"type":"image_url","image_url":{"url":"data:application/pdf;base64,aGk="}}),
                "415",
                "messages[3].content[1]",
            ),
            (
                json!({"type":"image_url","image_url":{"url":"data:image/tiff;base64,aGk="}}),
                "415",
                "messages[3].content[1]",
            ),
            (
                json!({"type":"input_audio","input_audio":{"data":"aGk=","format":"flac"}}),
                "415",
                "messages[3].content[1].input_audio.format",
            ),
            (
                json!({"type":"image_url","image_url":{"url":"data:image/png;base64,@@@"}}),
                "400",
                "messages[3].content[1]",
            ),
            (
                json!({"type":"image_url","image_url":{"url":"data:image/png,hello"}}),
                "400",
                "messages[3].content[1]",
            ),
            (
                json!({"type":"image_url","image_url":{"url":"ftp://x/y.png"}}),
                "400",
                "messages[3].content[1]",
            ),
            (
                json!({"type":"image_url","image_url":{"url":"/relative.png"}}),
                "400",
                "messages[3].content[1]",
            ),
            (
                json!({"type":"image_url","image_url":{}}),
                "400",
                "messages[3].content[1].image_url.url",
            ),
            (
                json!({"type":"image_url","image_url":{"url":"data:image/png;base64,"}}),
                "400",
                "messages[3].content[1]",
            ),
            (
                json!({"type":"file","file":{"file_id":"file-abc"}}),
                "400",
                "messages[3].content[1].file.file_id",
            ),
            (
                json!({"type":"file","file":{"filename":"x.pdf"}}),
                "400",
                "messages[3].content[1].file.file_data",
            ),
            (
                json!({"type":"file","file":{"file_data":"JVBERi0xLjQ="}}),
                "400",
                "messages[3].content[1].file.file_data",
            ),
            (
                json!({"type":"input_image","file_id":"file-abc"}),
                "400",
                "messages[3].content[1].file_id",
            ),
            (
                json!({"type":"input_image"}),
                "400",
                "messages[3].content[1].image_url",
            ),
            (
                json!({"type":"input_file","file_id":"file-abc"}),
                "400",
                "messages[3].content[1].file_id",
            ),
            (
                json!({"type":"input_audio","input_audio":{"format":"mp3"}}),
                "400",
                "messages[3].content[1].input_audio.data",
            ),
        ];
        for (part, status, param) in cases {
            let shown = part.to_string();
            let (got, msg, got_param) = refusal(part);
            assert_eq!(
                (got, got_param.as_deref()),
                (status, Some(param)),
                "{shown}: {msg}"
            );
            assert!(msg.starts_with("messages[3].content[1]"), "{shown}: {msg}");
        }
        let (_, msg, _) = refusal(json!({"type":"file","file":{"file_id":"file-abc"}}));
        assert!(msg.contains("inline"), "{msg}");
    }

    #[test]
    fn count_and_total_are_bounded() {
        let image = json!({"type":"image_url","image_url":{"url":"https://x.test/a.png"}});
        assert_eq!(
            parts(Value::Array(vec![image.clone(); MAX_FILES]))
                .unwrap()
                .len(),
            MAX_FILES
        );
        match parts(Value::Array(vec![image; MAX_FILES + 1])) {
            Err(ApiError::BadRequest { param, .. }) => {
                assert_eq!(param.as_deref(), Some("messages[3].content[10]"))
            }
            other => panic!("{other:?}"),
        }
        let file = json!({"type":"file","file":{"filename":"a.txt","file_data":"data:text/plain;base64,aGVsbG8="}});
        let files = parts(json!([file.clone(), file])).unwrap();
        assert!(check_total(&files, 10).is_ok());
        match check_total(&files, 9) {
            Err(ApiError::FileTooLarge { param, .. }) => {
                assert_eq!(param, "messages[3].content[1]")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn placeholders_come_from_the_part_as_sent() {
        let p = |v: Value| placeholder(v["type"].as_str().unwrap(), &v);
        assert_eq!(
            p(json!({"type":"image_url","image_url":{"url":"data:bogus"}})).unwrap(),
            "[image]"
        );
        assert_eq!(
            p(json!({"type":"input_image","image_url":"https://x"})).unwrap(),
            "[image]"
        );
        assert_eq!(
            p(json!({"type":"file","file":{"filename":" my\n report.pdf "}})).unwrap(),
            "[file: my report.pdf]"
        );
        assert_eq!(p(json!({"type":"file","file":{}})).unwrap(), "[file]");
        assert_eq!(
            p(json!({"type":"input_file","filename":"a.pdf"})).unwrap(),
            "[file: a.pdf]"
        );
        assert_eq!(p(json!({"type":"input_audio"})).unwrap(), "[audio]");
        assert_eq!(p(json!({"type":"text","text":"x"})), None);
    }
}
