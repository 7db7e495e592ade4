use std::io::Write;

use proptest::prelude::*;
use serde_json::{json, Value};
use ssm_offset_core::tokenize::{
    cache, jsonl, PairOptions, Template, Tokenizer, Truncation, IGNORE,
};
use ssm_offset_core::Error;

/// A word-level tokenizer small enough to write by hand: one id per word or punctuation run.
const TINY: &str = r####"{"version":"1.0","truncation":null,"padding":null,
 "added_tokens":[{"id":0,"content":"<|endoftext|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
 "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
 "model":{"type":"WordLevel","vocab":{"<|endoftext|>":0,"[UNK]":1,"a":2,"b":3,"c":4,"###":5,"d":6},"unk_token":"[UNK]"}}"####;

fn tiny() -> (tempfile::TempDir, Tokenizer) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, TINY).unwrap();
    let t = Tokenizer::from_file(&p, None, None).unwrap();
    (dir, t)
}

fn words(n: usize, w: &str) -> String {
    vec![w; n].join(" ")
}

fn pair_template() -> Template {
    Template::parse(r#"{"prompt": "{q} ###", "target": "{a}", "eos": true}"#).unwrap()
}

#[test]
fn pairs_concatenate_prompt_and_target_with_eos() {
    let (_d, tok) = tiny();
    let t = pair_template();
    let recs = [
        json!({"q": "a b", "a": "c d"}),
        json!({"q": "zzz", "a": "c"}),
    ];
    let rendered =
        ssm_offset_core::tokenize::render_all(&t, &recs, &|i| format!("record {i}")).unwrap();
    let opts = PairOptions {
        max_length: None,
        truncation: Truncation::Truncate,
    };
    let p = tok
        .encode_pairs(&rendered, &t, opts, &|i| format!("record {i}"))
        .unwrap();
    assert_eq!(p.input_ids.get(0), &[2, 3, 5, 4, 6, 0]);
    assert_eq!(&p.labels[..6], &[IGNORE, IGNORE, IGNORE, 4, 6, 0]);
    assert_eq!(p.input_ids.get(1), &[1, 5, 4, 0]);
    assert_eq!(p.prompt_lengths, vec![3, 2]);
    assert_eq!(p.stats.label_tokens, 5);
}

#[test]
fn missing_tokenizer_and_missing_field_name_the_source() {
    let e = Tokenizer::from_file("/nonexistent/tokenizer.json", None, None)
        .err()
        .unwrap();
    assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("/nonexistent/tokenizer.json"));
    let (d, tok) = tiny();
    let p = d.path().join("x.jsonl");
    std::fs::write(&p, "{\"q\": \"a\", \"a\": \"b\"}\n\n{\"q\": \"a\"}\n").unwrap();
    let opts = PairOptions {
        max_length: None,
        truncation: Truncation::Truncate,
    };
    let e = tok.encode_jsonl(&p, &pair_template(), opts).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:3: missing field \"a\" (record has [\"q\"])",
            p.display()
        )
    );
}

#[test]
fn cache_round_trip() {
    let (d, tok) = tiny();
    let p = d.path().join("x.jsonl");
    let mut f = std::fs::File::create(&p).unwrap();
    for i in 0..20 {
        writeln!(f, "{}", json!({"q": words(i, "a"), "a": "b c"})).unwrap();
    }
    let opts = PairOptions {
        max_length: Some(8),
        truncation: Truncation::Drop,
    };
    let t = pair_template();
    let pairs = tok.encode_jsonl(&p, &t, opts).unwrap();
    assert_eq!(pairs.stats.dropped, 15); // i + 4 tokens: only i <= 4 fit in 8
    let key = cache::key(&tok, &t, &p, &opts).unwrap();
    let dir = d.path().join("cache");
    assert!(cache::load(&dir, &key).unwrap().is_none());
    cache::save(&dir, &key, &pairs).unwrap();
    assert_eq!(cache::load(&dir, &key).unwrap().unwrap(), pairs);
    std::fs::write(cache::entry_path(&dir, &key), b"garbage").unwrap();
    assert!(cache::load(&dir, &key)
        .unwrap_err()
        .to_string()
        .contains("damaged token cache entry"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn truncation_invariants(np in 0usize..12, nt in 0usize..12, max in 1usize..20, policy in 0usize..3) {
        let (_d, tok) = tiny();
        let t = pair_template();
        let truncation = [Truncation::Truncate, Truncation::TruncatePrompt, Truncation::Drop][policy];
        let pairs = [(format!("{} ###", words(np, "a")), words(nt, "c"))];
        let p = tok.encode_pairs(&pairs, &t, PairOptions { max_length: Some(max), truncation }, &|i| i.to_string()).unwrap();
        let full = np + 1 + nt + 1;
        if full > max && truncation == Truncation::Drop {
            prop_assert_eq!(p.stats.dropped, 1);
            prop_assert!(p.input_ids.is_empty());
        } else {
            let ids = p.input_ids.get(0);
            prop_assert_eq!(ids.len(), full.min(max));
            let pl = p.prompt_lengths[0] as usize;
            prop_assert!(p.labels[..pl].iter().all(|&l| l == IGNORE));
            prop_assert_eq!(&p.labels[pl..], &ids[pl..]);
            prop_assert!(ids[..pl].iter().all(|&i| i == 2 || i == 5));
            prop_assert!(ids[pl..].iter().all(|&i| i == 4 || i == 0));
            if truncation == Truncation::TruncatePrompt {
                prop_assert_eq!(ids.len() - pl, (nt + 1).min(max)); // the target survives first
            }
        }
    }

    #[test]
    fn pack_is_the_stream_cut_into_blocks(docs in prop::collection::vec(0usize..7, 0..8), block in 1usize..9) {
        let (_d, tok) = tiny();
        let texts: Vec<String> = docs.iter().map(|&n| words(n, "b")).collect();
        let stream: Vec<i32> = docs.iter().flat_map(|&n| std::iter::repeat_n(3, n).chain([0])).collect();
        let (ids, n, stats) = tok.pack(&texts, block, true, false).unwrap();
        prop_assert_eq!(n, stream.len() / block);
        prop_assert_eq!(&ids[..], &stream[..n * block]);
        prop_assert_eq!(stats.dropped_tokens as usize, stream.len() % block);
    }

    #[test]
    fn jsonl_reads_back_what_was_written(recs in prop::collection::vec(("\\PC{0,12}", any::<i32>(), prop::option::of(any::<bool>())), 0..10), blanks in prop::collection::vec(any::<bool>(), 10)) {
        let mut text = String::new();
        let mut expect = Vec::new();
        let mut line = 0u64;
        for (i, (s, n, b)) in recs.iter().enumerate() {
            if blanks[i] { text.push_str("  \r\n"); line += 1; }
            let v = json!({"s": s, "n": n, "b": b});
            text.push_str(&v.to_string());
            text.push('\n');
            line += 1;
            expect.push((line, v));
        }
        let got: Vec<(u64, Value)> = jsonl::JsonlReader::new(text.as_bytes(), "p.jsonl").collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(got, expect);
    }

    #[test]
    fn templates_render_literals_and_fields(lit in "[^{}]{0,8}", val in "\\PC{0,8}") {
        let spec = json!({"prompt": format!("{{{{{lit}}}}} {{x}}"), "target": "{x}"}).to_string();
        let t = Template::parse(&spec).unwrap();
        let (p, tg) = t.render(&json!({"x": val})).unwrap();
        prop_assert_eq!(p, format!("{{{lit}}} {val}"));
        prop_assert_eq!(tg, val);
        prop_assert_eq!(Template::parse(&t.to_json()).unwrap(), t);
    }

    #[test]
    fn reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = jsonl::read_all(&bytes);
        ssm_offset_core::fuzzing::jsonl(&bytes);
    }
}
