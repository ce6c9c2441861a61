//! Which file URLs Dify may be asked to fetch (`transfer_method: remote_url`). Dify fetches
//! them from inside the operator's network, so a URL naming an internal address would let
//! any key holder read it through Dify (the cloud metadata service, an admin port on
//! loopback, a private subnet). Pure and without DNS: only what the URL itself says is
//! judged (an IP literal in a non-public range, or a name that is local by definition);
//! a public-looking name that resolves to an internal address is the job of Dify's own
//! SSRF proxy (`SSRF_PROXY_HTTP_URL`), which resolves and fetches it.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value};
use url::{Host, Url};

use crate::error::ApiError;

use super::files::{Attachment, Source};

/// `REMOTE_FILE_URLS`: which remote file URLs are passed on to Dify.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RemoteFileUrls {
    /// Only URLs whose host may be public (the default).
    #[default]
    Public,
    /// Every http(s) URL: for a Dify that legitimately reads internal hosts.
    Any,
    /// None: files must be sent inline.
    Off,
}

impl RemoteFileUrls {
    /// `public`, `any` or `off`, any case.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "public" => Some(Self::Public),
            "any" => Some(Self::Any),
            "off" => Some(Self::Off),
            _ => None,
        }
    }
}

/// Refuses the first remote file of the turn that `policy` does not let Dify fetch.
pub fn check(files: &[Attachment], policy: RemoteFileUrls) -> Result<(), ApiError> {
    for file in files {
        if let Source::Remote { url, param } = &file.source {
            check_one(url, param, policy)?;
        }
    }
    Ok(())
}

/// Refuses a remote file a request put in the app's inputs (a workflow's file variable
/// given as `{"transfer_method": "remote_url", "url": ...}`), which Dify fetches the same
/// way. `defaults` are the model's own inputs from MODEL_CONFIG: the operator's, trusted.
pub fn check_inputs(
    inputs: &Map<String, Value>,
    defaults: &Map<String, Value>,
    policy: RemoteFileUrls,
) -> Result<(), ApiError> {
    for (name, value) in inputs {
        if defaults.get(name) == Some(value) {
            continue;
        }
        let param = format!("inputs.{name}");
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    check_input_file(item, &format!("{param}[{i}]"), policy)?;
                }
            }
            other => check_input_file(other, &param, policy)?,
        }
    }
    Ok(())
}

fn check_input_file(value: &Value, param: &str, policy: RemoteFileUrls) -> Result<(), ApiError> {
    let Value::Object(file) = value else {
        return Ok(());
    };
    if file.get("transfer_method").and_then(Value::as_str) != Some("remote_url") {
        return Ok(());
    }
    // Dify reads `url`, and `remote_url` from older clients.
    for key in ["url", "remote_url"] {
        if let Some(url) = file.get(key).and_then(Value::as_str) {
            check_one(url, &format!("{param}.{key}"), policy)?;
        }
    }
    Ok(())
}

/// One URL, `param` naming the field that holds it.
pub fn check_one(url: &str, param: &str, policy: RemoteFileUrls) -> Result<(), ApiError> {
    let refuse = |message: String| ApiError::RemoteUrlRefused {
        message,
        param: param.to_string(),
    };
    match policy {
        RemoteFileUrls::Any => Ok(()),
        RemoteFileUrls::Off => Err(refuse(format!(
            "{param}: this proxy's operator turned remote file URLs off (REMOTE_FILE_URLS=off): send the file inline as a base64 data: URI."
        ))),
        RemoteFileUrls::Public => match internal_host(url) {
            None => Ok(()),
            Some(why) => Err(refuse(format!(
                "{param}: the URL's host is {why}, which Dify would fetch from inside the operator's network; only public addresses are allowed. Send the file inline as a base64 data: URI."
            ))),
        },
    }
}

/// Why the URL's host is not public, or `None` when it may be. A URL that does not parse
/// has no host to reach: it is refused elsewhere as malformed.
pub fn internal_host(url: &str) -> Option<&'static str> {
    // The `url` crate reads the host as Dify's fetcher would: `2130706433`, `0x7f.1`,
    // `127.1` and `0177.0.0.1` all become 127.0.0.1, and a trailing dot is kept on names.
    let parsed = Url::parse(url.trim()).ok()?;
    match parsed.host()? {
        Host::Ipv4(ip) => internal_v4(ip),
        Host::Ipv6(ip) => internal_v6(ip),
        Host::Domain(name) => local_name(name),
    }
}

fn local_name(name: &str) -> Option<&'static str> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    // Names that never resolve to a public host: `localhost` (RFC 6761) and `.internal`
    // (reserved for private use; Google Cloud's metadata.google.internal).
    if name == "localhost" || name.ends_with(".localhost") {
        Some("a local name (localhost)")
    } else if name == "internal" || name.ends_with(".internal") {
        Some("a private name (.internal)")
    } else {
        None
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "an unspecified address (0.0.0.0/8)",
        (127, _, _) => "a loopback address",
        (10, _, _) | (192, 168, _) => "a private address",
        (172, 16..=31, _) => "a private address",
        (169, 254, _) => "a link-local address (the cloud metadata service among them)",
        (100, 64..=127, _) => "a shared address (carrier-grade NAT, 100.64.0.0/10)",
        // IETF protocol assignments (192.0.0.0/24), the documentation networks, the
        // benchmark network and the 6to4 relay: never a public server's address.
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) | (192, 88, 99) => {
            "a reserved address"
        }
        (198, 18..=19, _) => "a reserved address (benchmarking)",
        (224..=239, _, _) => "a multicast address",
        (240..=255, _, _) => "a reserved address (240.0.0.0/4 or broadcast)",
        _ => return None,
    })
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    // An IPv4 address written as IPv6 reaches that IPv4 host: mapped (::ffff:a.b.c.d),
    // the old compatible form (::a.b.c.d), NAT64's well-known prefix (64:ff9b::/96).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return internal_v4(v4);
    }
    let embedded = Ipv4Addr::new(
        (segments[6] >> 8) as u8,
        segments[6] as u8,
        (segments[7] >> 8) as u8,
        segments[7] as u8,
    );
    if segments[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified() {
        return internal_v4(embedded);
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return internal_v4(embedded);
    }
    // 6to4 (2002:aabb:ccdd::/48) carries the IPv4 address in its second and third groups.
    if segments[0] == 0x2002 {
        let v4 = Ipv4Addr::new(
            (segments[1] >> 8) as u8,
            segments[1] as u8,
            (segments[2] >> 8) as u8,
            segments[2] as u8,
        );
        if let Some(why) = internal_v4(v4) {
            return Some(why);
        }
    }
    Some(match segments[0] {
        _ if ip.is_unspecified() => "an unspecified address (::)",
        _ if ip.is_loopback() => "a loopback address",
        s if s & 0xfe00 == 0xfc00 => "a unique-local address (fc00::/7)",
        s if s & 0xffc0 == 0xfe80 => "a link-local address (fe80::/10)",
        s if s & 0xffc0 == 0xfec0 => "a site-local address (fec0::/10)",
        s if s & 0xff00 == 0xff00 => "a multicast address",
        0x2001 if segments[1] == 0x0db8 => "a documentation address (2001:db8::/32)",
        0x0100 if segments[1..4] == [0; 3] => "a discard-only address (100::/64)",
        _ => return None,
    })
}

/// Same as [`internal_host`], for an address already parsed (tests).
#[cfg(test)]
fn internal_ip(ip: std::net::IpAddr) -> Option<&'static str> {
    match ip {
        std::net::IpAddr::V4(v4) => internal_v4(v4),
        std::net::IpAddr::V6(v6) => internal_v6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_in_every_spelling() {
        for url in [
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "http://127.0.0.1:8080/admin",
            "http://10.1.2.3/x.png",
            "http://172.16.0.1/x.png",
            "http://172.31.255.255/x.png",
            "http://192.168.1.1/x.png",
            "http://100.64.0.1/x.png",
            "http://100.127.255.254/x.png",
            "http://0.0.0.0/x.png",
            "http://0.1.2.3/x.png",
            "http://224.0.0.1/x.png",
            "http://255.255.255.255/x.png",
            "http://198.18.0.1/x.png",
            "http://192.0.2.1/x.png",
            // Decimal, hex, octal and short forms the URL parser normalises.
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://0xa9fea9fe/latest/meta-data/",
            "http://127.0.0.1./x.png",
            // IPv6 and IPv4 written as IPv6.
            "http://[::1]/x.png",
            "http://[::]/x.png",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::10.0.0.1]/",
            "http://[2002:c0a8:0101::1]/",
            "http://[fc00::1]/x.png",
            "http://[fd12:3456::1]/x.png",
            "http://[fe80::1]/x.png",
            "http://[ff02::1]/x.png",
            "http://[2001:db8::1]/x.png",
            // Local names, any case, with a trailing dot.
            "http://localhost/x.png",
            "http://LOCALHOST./x.png",
            "http://api.localhost/x.png",
            "https://metadata.google.internal/computeMetadata/v1/",
            "http://user:pass@localhost:9000/x.png",
        ] {
            assert!(internal_host(url).is_some(), "{url} was allowed");
        }
    }

    #[test]
    fn public_addresses_and_names_pass() {
        for url in [
            "https://images.example/cat.png",
            "https://example.com/cat.png",
            "http://8.8.8.8/x.png",
            "http://1.1.1.1/x.png",
            "http://172.32.0.1/x.png",
            "http://100.128.0.1/x.png",
            "http://169.255.0.1/x.png",
            "http://[2606:4700:4700::1111]/x.png",
            "http://[::ffff:8.8.8.8]/x.png",
            "https://localhost.example.com/x.png",
            "https://notlocalhost/x.png",
            "https://x/y.mp4",
        ] {
            assert_eq!(internal_host(url), None, "{url} was refused");
        }
    }

    #[test]
    fn reasons_are_specific() {
        assert_eq!(
            internal_ip("169.254.169.254".parse().unwrap()),
            Some("a link-local address (the cloud metadata service among them)")
        );
        assert_eq!(
            internal_ip("::1".parse().unwrap()),
            Some("a loopback address")
        );
        assert_eq!(
            internal_host("http://[::ffff:10.0.0.1]/"),
            Some("a private address")
        );
    }

    #[test]
    fn remote_files_in_inputs_are_checked_too() {
        let defaults = serde_json::json!({"doc": {"transfer_method": "remote_url", "url": "http://10.0.0.5/handbook.pdf"}});
        let defaults = defaults.as_object().unwrap();
        let inputs = |v: serde_json::Value| v.as_object().unwrap().clone();
        // The model's own default is the operator's: kept.
        assert!(check_inputs(defaults, defaults, RemoteFileUrls::Public).is_ok());
        for (value, param) in [
            (
                serde_json::json!({"doc": {"type": "document", "transfer_method": "remote_url", "url": "http://169.254.169.254/"}}),
                "inputs.doc.url",
            ),
            (
                serde_json::json!({"docs": [{"transfer_method": "local_file", "upload_file_id": "u"}, {"transfer_method": "remote_url", "remote_url": "http://localhost/x"}]}),
                "inputs.docs[1].remote_url",
            ),
        ] {
            match check_inputs(&inputs(value), defaults, RemoteFileUrls::Public) {
                Err(ApiError::RemoteUrlRefused { param: p, .. }) => assert_eq!(p, param),
                other => panic!("{other:?}"),
            }
        }
        let public = inputs(
            serde_json::json!({"doc": {"transfer_method": "remote_url", "url": "https://docs.example/a.pdf"}, "topic": "cats"}),
        );
        assert!(check_inputs(&public, defaults, RemoteFileUrls::Public).is_ok());
        assert!(check_inputs(&public, defaults, RemoteFileUrls::Off).is_err());
    }

    #[test]
    fn the_setting_decides() {
        let url = "http://127.0.0.1/x.png";
        let param = "messages[0].content[1].image_url";
        assert!(check_one(url, param, RemoteFileUrls::Any).is_ok());
        match check_one(url, param, RemoteFileUrls::Public) {
            Err(ApiError::RemoteUrlRefused { message, param: p }) => {
                assert_eq!(p, param);
                assert!(
                    message.starts_with(param) && message.contains("loopback"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(check_one("https://example.com/a.png", param, RemoteFileUrls::Public).is_ok());
        match check_one("https://example.com/a.png", param, RemoteFileUrls::Off) {
            Err(ApiError::RemoteUrlRefused { message, .. }) => {
                assert!(message.contains("REMOTE_FILE_URLS=off"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(RemoteFileUrls::parse(" Any "), Some(RemoteFileUrls::Any));
        assert_eq!(RemoteFileUrls::parse("OFF"), Some(RemoteFileUrls::Off));
        assert_eq!(
            RemoteFileUrls::parse("public"),
            Some(RemoteFileUrls::Public)
        );
        assert_eq!(RemoteFileUrls::parse("all"), None);
    }
}
