//! Translation throughput: Dify SSE bytes in → OpenAI SSE bytes out, on one core.
//!
//! `cargo bench --bench translate` (a filter after `--` selects benchmarks, e.g.
//! `cargo bench --bench translate -- synthetic`).
//!
//! What is timed is exactly the per-read work of the streaming pump in
//! `src/routes/stream.rs`, without the network: each Dify network read is pushed into an
//! `EventDecoder`, every event goes through `DifyDecoder::on_item` into answer pieces,
//! each piece into the `Accumulator` and the `ChunkEncoder`'s SSE bytes, and the buffer
//! becomes one `Bytes` per read. New decoders, accumulator and encoder are built per
//! transcript, as per request.
//!
//! Inputs (throughput is counted in bytes of Dify input, decimal MB/s):
//! - `fixtures`: every `tests/fixtures/dify/*.sse`, one network read per SSE frame, all
//!   transcripts per iteration;
//! - `synthetic`: a long chat answer, 2,000 `message` frames as Dify ≥ 1.8 writes them
//!   (orjson, ~300 bytes each) plus `message_end`, read per frame and in 16 KiB reads.
//!
//! Baselines, measured in the same run over the same bytes:
//! - `json_value` (the reference for the ratio): `serde_json::from_str::<Value>` of every
//!   frame's `data:` payload, pre-extracted outside the timed loop. Parsing each frame's
//!   JSON is the one step any SSE-to-SSE translator must do; a generic `Value` parse is
//!   what a naive proxy would do. A ratio near 1 means framing, typed parsing and
//!   re-serialization together cost about as much as one generic JSON parse.
//! - `copy`: the same reads copied into a buffer and frozen into `Bytes` per read, with no
//!   scanning at all: the memory-bandwidth ceiling of "forwarding bytes".
//! - `decode_only`: `EventDecoder` alone (SSE framing + typed JSON), to split the cost.
//!
//! After criterion's own output a summary table prints MB/s and the ratios, read from this
//! run's `estimates.json` files (benchmarks not run in this process are left out).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use opendify::answer::{Accumulator, DifyDecoder, Flow, Piece, StreamEncoder};
use opendify::dify::sse::{DecodeError, EventDecoder};
use opendify::dify::{DifyError, DifyEvent};
use opendify::openai::chat::{ChunkEncoder, ChunkMeta};
use url::Url;

const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dify");
const SYNTHETIC_FRAMES: usize = 2_000;
const BULK_READ: usize = 16 * 1024;

/// One transcript, cut into the network reads the pump would see.
struct Transcript {
    name: String,
    bytes: Vec<u8>,
    /// Read boundaries, as ranges into `bytes`.
    reads: Vec<(usize, usize)>,
    /// The `data:` payloads, for the JSON baseline.
    payloads: Vec<String>,
}

impl Transcript {
    fn new(name: String, bytes: Vec<u8>, read_size: Option<usize>) -> Self {
        let reads = match read_size {
            None => frame_reads(&bytes),
            Some(n) => (0..bytes.len())
                .step_by(n)
                .map(|s| (s, (s + n).min(bytes.len())))
                .collect(),
        };
        let payloads = data_payloads(&bytes);
        Transcript {
            name,
            bytes,
            reads,
            payloads,
        }
    }

    fn reads(&self) -> impl Iterator<Item = &[u8]> {
        self.reads.iter().map(|&(s, e)| &self.bytes[s..e])
    }
}

/// One read per SSE frame (cut after each blank line), as Dify writes them.
fn frame_reads(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b'\n' && bytes[i + 1] == b'\n' {
            out.push((start, i + 2));
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    if start < bytes.len() {
        out.push((start, bytes.len()));
    }
    out
}

fn data_payloads(bytes: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(bytes).expect("fixtures are UTF-8");
    text.split("\n\n")
        .filter_map(|frame| {
            let data: Vec<&str> = frame
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|v| v.strip_prefix(' ').unwrap_or(v))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

fn fixtures() -> Vec<Transcript> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(FIXTURE_DIR)
        .expect("fixture dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sse"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no fixtures in {FIXTURE_DIR}");
    names
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            Transcript::new(name, std::fs::read(&p).expect("fixture"), None)
        })
        .collect()
}

/// A long chat answer in Dify's current (orjson) framing, like `FakeDify`'s generated
/// answers: fixed ids, words of 1–12 characters with their leading space, some non-ASCII.
fn synthetic() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "The",
        " quarterly",
        " report",
        " shows",
        " revenue",
        " grew",
        " 12%",
        " year",
        " over",
        " year,",
        " driven",
        " by",
        " strong",
        " demand",
        " in",
        " Europe",
        " and",
        " Asia.",
        " Café",
        " sales",
        " (über",
        " 40",
        " outlets)",
        " rose;",
        " 东京",
        " stores",
        " opened",
        " in",
        " March.",
        "\n\n",
        "Next",
        " steps:",
        " `review`",
        " \"costs\"",
        " 👍",
    ];
    let head = r#"data: {"event":"message","conversation_id":"7d2f9a61-3b4e-4c8a-b1d5-0e6f2a9c4b37","message_id":"a3e1c7f2-6d4b-4e9a-8c5f-1b2d3e4f5a6b","created_at":1784212345,"task_id":"5c4a1e3b-8f0d-4f6b-9a2e-3d7c1b0e9f11","id":"a3e1c7f2-6d4b-4e9a-8c5f-1b2d3e4f5a6b","answer":"#;
    let mut out = String::new();
    for i in 0..SYNTHETIC_FRAMES {
        out.push_str(head);
        out.push_str(&serde_json::Value::String(WORDS[i % WORDS.len()].into()).to_string());
        out.push_str(",\"from_variable_selector\":null}\n\n");
    }
    out.push_str(r#"data: {"event":"message_end","conversation_id":"7d2f9a61-3b4e-4c8a-b1d5-0e6f2a9c4b37","message_id":"a3e1c7f2-6d4b-4e9a-8c5f-1b2d3e4f5a6b","created_at":1784212345,"task_id":"5c4a1e3b-8f0d-4f6b-9a2e-3d7c1b0e9f11","id":"a3e1c7f2-6d4b-4e9a-8c5f-1b2d3e4f5a6b","metadata":{"annotation_reply":null,"retriever_resources":[],"usage":{"prompt_tokens":1070,"prompt_unit_price":"0.15","prompt_price_unit":"0.000001","prompt_price":"0.0001605","completion_tokens":2000,"completion_unit_price":"0.6","completion_price_unit":"0.000001","completion_price":"0.0012","total_tokens":3070,"total_price":"0.0013605","currency":"USD","latency":41.2,"time_to_first_token":0.4,"time_to_generate":40.8}},"files":null}"#);
    out.push_str("\n\n");
    out.into_bytes()
}

fn base() -> Url {
    Url::parse("https://dify.example/v1/").unwrap()
}

/// The pump's work for one transcript; returns the OpenAI bytes produced.
fn translate(t: &Transcript, base: &Url) -> usize {
    let meta = ChunkMeta {
        id: "chatcmpl-0123456789abcdef0123456789abcdef".into(),
        created: 1_767_225_600,
        model: "my-app".into(),
        include_usage: true,
    };
    let mut frames = EventDecoder::new();
    let mut decoder = DifyDecoder::new("my-app", base.clone());
    let mut answer = Accumulator::new();
    let mut encoder = ChunkEncoder::new(meta);
    let mut events = Vec::new();
    let mut pieces = Vec::new();
    let mut buf = Vec::new();
    StreamEncoder::start(&mut encoder, &mut buf);
    let mut produced = 0;
    for read in t.reads() {
        produced += flush(&mut buf);
        frames.push(read, &mut events);
        let stopped = decode(&mut events, &mut decoder, &mut pieces);
        encode(&mut pieces, &mut answer, &mut encoder, &mut buf);
        if stopped {
            return produced + flush(&mut buf);
        }
    }
    frames.finish(&mut events);
    decode(&mut events, &mut decoder, &mut pieces);
    decoder.on_end(&mut pieces);
    encode(&mut pieces, &mut answer, &mut encoder, &mut buf);
    produced + flush(&mut buf)
}

/// Hands the buffer on as one `Bytes`, as the pump does per read.
fn flush(buf: &mut Vec<u8>) -> usize {
    if buf.is_empty() {
        return 0;
    }
    let b = Bytes::from(std::mem::take(buf));
    let n = b.len();
    black_box(b);
    n
}

/// Decodes events into pieces; true once the answer failed.
fn decode(
    events: &mut Vec<Result<DifyEvent, DecodeError>>,
    decoder: &mut DifyDecoder,
    pieces: &mut Vec<Piece>,
) -> bool {
    events
        .drain(..)
        .any(|item| decoder.on_item(item.map_err(DifyError::from), pieces) == Flow::Stop)
}

fn encode(
    pieces: &mut Vec<Piece>,
    answer: &mut Accumulator,
    encoder: &mut ChunkEncoder,
    buf: &mut Vec<u8>,
) {
    for piece in pieces.drain(..) {
        answer.apply(&piece);
        encoder.encode(piece, answer, buf);
    }
}

fn decode_only(t: &Transcript) -> usize {
    let mut decoder = EventDecoder::new();
    let mut events = Vec::new();
    let mut n = 0;
    for read in t.reads() {
        decoder.push(read, &mut events);
        n += events.len();
        black_box(events.drain(..).count());
    }
    decoder.finish(&mut events);
    n + events.len()
}

fn json_value(t: &Transcript) -> usize {
    t.payloads
        .iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_str(p).expect("fixture JSON");
            black_box(v);
        })
        .count()
}

fn copy(t: &Transcript) -> usize {
    let mut buf = Vec::new();
    let mut n = 0;
    for read in t.reads() {
        buf.extend_from_slice(read);
        let b = Bytes::from(std::mem::take(&mut buf));
        n += b.len();
        black_box(b);
    }
    n
}

type Runner = fn(&Transcript, &Url) -> usize;
const VARIANTS: &[(&str, Runner)] = &[
    ("translate", translate),
    ("decode_only", |t, _| decode_only(t)),
    ("json_value", |t, _| json_value(t)),
    ("copy", |t, _| copy(t)),
];

fn output_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("criterion")
}

fn main() {
    let started = SystemTime::now();
    let out_dir = output_dir();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .output_directory(&out_dir)
        .configure_from_args();
    let url = base();

    let fixtures = fixtures();
    let fixture_bytes: usize = fixtures.iter().map(|t| t.bytes.len()).sum();
    let synth = synthetic();
    let synthetic_sets = [
        (
            "synthetic_frames",
            vec![Transcript::new("synthetic".into(), synth.clone(), None)],
        ),
        (
            "synthetic_16k_reads",
            vec![Transcript::new("synthetic".into(), synth, Some(BULK_READ))],
        ),
    ];
    // Every transcript must translate to something, and the decoder must accept it.
    for t in fixtures
        .iter()
        .chain(synthetic_sets.iter().flat_map(|s| &s.1))
    {
        assert!(translate(t, &url) > 0, "{} produced nothing", t.name);
    }
    eprintln!(
        "inputs: {} fixtures ({fixture_bytes} bytes, {} frames); synthetic: {} bytes, {} reads per frame / {} reads of 16 KiB",
        fixtures.len(),
        fixtures.iter().map(|t| t.reads.len()).sum::<usize>(),
        synthetic_sets[0].1[0].bytes.len(),
        synthetic_sets[0].1[0].reads.len(),
        synthetic_sets[1].1[0].reads.len(),
    );

    let sets =
        std::iter::once(("fixtures", &fixtures)).chain(synthetic_sets.iter().map(|(n, v)| (*n, v)));
    let mut groups = Vec::new();
    for (group_name, set) in sets {
        let bytes: usize = set.iter().map(|t| t.bytes.len()).sum();
        let mut group = c.benchmark_group(group_name);
        group.throughput(Throughput::BytesDecimal(bytes as u64));
        for (variant, run) in VARIANTS {
            group.bench_function(*variant, |b| {
                b.iter(|| set.iter().map(|t| run(black_box(t), &url)).sum::<usize>())
            });
        }
        group.finish();
        groups.push((group_name, bytes));
    }
    // Per transcript, translation only.
    {
        let mut group = c.benchmark_group("per_fixture");
        for t in &fixtures {
            group.throughput(Throughput::BytesDecimal(t.bytes.len() as u64));
            group.bench_function(t.name.as_str(), |b| {
                b.iter(|| translate(black_box(t), &url))
            });
        }
        group.finish();
    }
    c.final_summary();
    summary(&out_dir, started, &groups, &fixtures);
}

/// Median time per iteration (ns) of a benchmark, if it ran in this process.
fn median_ns(out_dir: &Path, group: &str, id: &str, since: SystemTime) -> Option<f64> {
    let path = out_dir.join(group).join(id).join("new/estimates.json");
    let fresh = std::fs::metadata(&path).ok()?.modified().ok()? >= since;
    if !fresh {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn summary(out_dir: &Path, since: SystemTime, groups: &[(&str, usize)], fixtures: &[Transcript]) {
    let mbs = |bytes: usize, ns: f64| bytes as f64 / ns * 1e3; // bytes/ns * 1e3 = MB/s
    println!("\n== translate summary (median of criterion samples, MB/s of Dify input, 1 core) ==");
    println!(
        "{:<22} {:>10} {:>12} {:>12} {:>10} {:>22} {:>14}",
        "input", "bytes", "translate", "decode_only", "json_value", "translate/json_value", "copy"
    );
    for (group, bytes) in groups {
        let get = |id| median_ns(out_dir, group, id, since);
        let Some(t) = get("translate") else { continue };
        let cell = |ns: Option<f64>| ns.map_or("-".into(), |ns| format!("{:.0}", mbs(*bytes, ns)));
        let ratio = get("json_value").map_or("-".into(), |j| format!("{:.2}x time", t / j));
        println!(
            "{:<22} {:>10} {:>12.0} {:>12} {:>10} {:>22} {:>14}",
            group,
            bytes,
            mbs(*bytes, t),
            cell(get("decode_only")),
            cell(get("json_value")),
            ratio,
            cell(get("copy")),
        );
    }
    for t in fixtures {
        if let Some(ns) = median_ns(out_dir, "per_fixture", &t.name, since) {
            println!(
                "  per_fixture {:<28} {:>6} bytes {:>8.0} MB/s  {:>8.1} µs/transcript",
                t.name,
                t.bytes.len(),
                mbs(t.bytes.len(), ns),
                ns / 1e3
            );
        }
    }
}
