//! Tokenizers and data for the Llama family: a `tokenizer.json` gives the ids Python
//! `tokenizers` gives; the folder's chat template renders what transformers'
//! `apply_chat_template` renders; chat data in every format (OpenAI messages, alpaca,
//! sharegpt) is rendered and tokenized with only the assistants' text learned; a malformed
//! line is an error naming file and line; tokenized data is cached beside the input; and
//! `zinf train --init-from` a Qwen2-shaped folder on chat data with everything on NVMe writes
//! a folder that re-imports bit-exact. Fixtures: `tests/data/llama/chat`
//! (`scripts/llama_fixtures.py`).

use std::path::{Path, PathBuf};
use zinf::data::chat::{ChatTemplate, Message};
use zinf::data::formats::{self, cache_path, DataFormat, TokenizeWith, PROMPT_FLAG};
use zinf::data::Tokenizer;

fn chat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/llama/chat")
}

fn cases() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(chat_dir().join("tokenizer_cases.json")).unwrap())
        .unwrap()
}

#[test]
fn tokenizer_json_gives_the_ids_of_python_tokenizers() {
    let tok = Tokenizer::from_folder(&chat_dir()).unwrap();
    for c in cases()["strings"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text).unwrap(), want, "{text:?}");
        assert_eq!(tok.decode(&want).unwrap(), text, "decode {text:?}");
    }
    assert_eq!(tok.token_id("<|im_end|>"), Some(319));
}

#[test]
fn chat_template_renders_as_transformers() {
    let chat = ChatTemplate::from_folder(&chat_dir())
        .unwrap()
        .expect("a template");
    for c in cases()["chats"].as_array().unwrap() {
        let messages: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
        assert_eq!(
            chat.render(&messages, false).unwrap(),
            c["text"].as_str().unwrap()
        );
        let prompt = chat.render(&messages[..messages.len() - 1], true).unwrap();
        assert_eq!(prompt, c["prompt"].as_str().unwrap());
    }
}

fn copy_to(tmp: &Path, name: &str, text: &str) -> PathBuf {
    let p = tmp.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn chat_data_in_every_format_learns_only_the_assistant_text() {
    let tok = Tokenizer::from_folder(&chat_dir()).unwrap();
    let chat = ChatTemplate::from_folder(&chat_dir()).unwrap().unwrap();
    let with = TokenizeWith {
        tokenizer: &tok,
        chat: Some(&chat),
    };
    let tmp = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"messages": [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Bernardo."}]}"#,
        r#"{"instruction": "Who?", "input": "", "output": "Bernardo."}"#,
        r#"{"conversations": [{"from": "human", "value": "Who?"}, {"from": "gpt", "value": "Bernardo."}]}"#,
    ];
    let mut streams = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let p = copy_to(tmp.path(), &format!("d{i}.jsonl"), line);
        streams.push(formats::load(&p, DataFormat::Auto, &with).unwrap());
    }
    // The three formats are the same conversation.
    assert_eq!(streams[0], streams[1]);
    assert_eq!(streams[0], streams[2]);
    let s = &streams[0];
    let learned: Vec<u32> = s.iter().copied().filter(|k| k & PROMPT_FLAG == 0).collect();
    // What is learned is the assistant's text and the end of its turn, nothing of the prompt.
    let text = tok.decode(&learned).unwrap();
    assert_eq!(text, "Bernardo.<|im_end|>\n");
    let all: Vec<u32> = s.iter().map(|k| k & !PROMPT_FLAG).collect();
    assert!(tok
        .decode(&all)
        .unwrap()
        .contains("<|im_start|>user\nWho?<|im_end|>"));
    // Masked tokens become ignored targets in a batch.
    let ds = zinf::data::Dataset {
        train: s.clone(),
        val: Vec::new().into(),
    };
    let (x, y) = zinf::data::val_batches(&ds.train, 1, s.len() - 1, 1)[0].clone();
    assert!(x.iter().all(|k| k & PROMPT_FLAG == 0));
    for (t, &k) in y.iter().zip(&s[1..]) {
        let want = if k & PROMPT_FLAG != 0 {
            zinf::device::IGNORE_INDEX
        } else {
            k
        };
        assert_eq!(*t, want);
    }
}

#[test]
fn malformed_lines_and_missing_templates_are_errors_naming_file_and_line() {
    let tok = Tokenizer::from_folder(&chat_dir()).unwrap();
    let chat = ChatTemplate::from_folder(&chat_dir()).unwrap().unwrap();
    let with = TokenizeWith {
        tokenizer: &tok,
        chat: Some(&chat),
    };
    let tmp = tempfile::tempdir().unwrap();
    let good = r#"{"text": "fine"}"#;
    for (bad, want) in [
        ("{not json", "line 2: not JSON"),
        ("[1, 2]", "line 2: not a JSON object"),
        (r#"{"prompt": "x"}"#, "line 2: no \"text\""),
        (
            r#"{"messages": [{"role": "user"}]}"#,
            "line 2: messages[0]: \"content\" missing",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
            "line 2: no assistant turn",
        ),
        (
            r#"{"conversations": [{"from": "robot", "value": "x"}]}"#,
            "line 2: conversations[0].from",
        ),
    ] {
        let p = copy_to(tmp.path(), "bad.jsonl", &format!("{good}\n{bad}\n"));
        let e = formats::load(&p, DataFormat::Auto, &with)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.jsonl") && e.contains(want), "{bad}: {e}");
    }
    let no_chat = TokenizeWith {
        tokenizer: &tok,
        chat: None,
    };
    let p = copy_to(
        tmp.path(),
        "c.jsonl",
        r#"{"instruction": "a", "output": "b"}"#,
    );
    let e = formats::load(&p, DataFormat::Auto, &no_chat)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 1") && e.contains("chat_template"), "{e}");
    let e = Tokenizer::from_folder(tmp.path())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
}

#[test]
fn tokenized_data_is_cached_beside_the_input_mapped_and_keyed_by_its_bytes() {
    let tok = Tokenizer::from_folder(&chat_dir()).unwrap();
    let with = TokenizeWith {
        tokenizer: &tok,
        chat: None,
    };
    let tmp = tempfile::tempdir().unwrap();
    let p = copy_to(tmp.path(), "a.txt", "To be, or not to be.");
    let first = formats::load(&p, DataFormat::Auto, &with).unwrap();
    // Served from the mapped cache, not a copy in memory.
    assert!(first.is_mapped());
    let caches: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tokens"))
        .collect();
    assert_eq!(caches.len(), 1, "{caches:?}");
    // A second load reads the cache: corrupting what it holds shows it was used...
    let mut bytes = std::fs::read(&caches[0]).unwrap();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&7u32.to_le_bytes());
    std::fs::write(&caches[0], &bytes).unwrap();
    let second = formats::load(&p, DataFormat::Auto, &with).unwrap();
    assert_eq!(second[..second.len() - 1], first[..first.len() - 1]);
    assert_eq!(*second.last().unwrap(), 7);
    // ...and new bytes in the file make a new key.
    std::fs::write(&p, "Now is the winter.").unwrap();
    let third = formats::load(&p, DataFormat::Auto, &with).unwrap();
    assert_eq!(third, tok.encode("Now is the winter.").unwrap());
    assert!(!cache_path(&p, 0).exists());
}

#[test]
fn train_from_a_qwen2_folder_on_chat_data_with_state_on_nvme_exports_a_loadable_folder() {
    use std::sync::atomic::AtomicBool;
    use zinf::cli::train::{train, TrainArgs};
    let tmp = tempfile::tempdir().unwrap();
    let nvme = tmp.path().join("nvme");
    let cfg = format!(
        r#"{{
  "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": "auto",
  "optimizer": {{ "type": "AdamW", "params": {{ "lr": 1e-3 }} }},
  "bf16": {{ "enabled": true }},
  "zero_optimization": {{ "stage": 3,
    "offload_param": {{ "device": "nvme", "nvme_path": "{n}" }},
    "offload_optimizer": {{ "device": "nvme", "nvme_path": "{n}" }} }},
  "zinf": {{ "data": {{ "seq_len": 32, "val_fraction": 0.2, "eval_batches": 1 }},
            "device_memory_budget": "256MiB" }}
}}"#,
        n = nvme.display()
    );
    let cfg_path = copy_to(tmp.path(), "cfg.json", &cfg);
    let data: String = (0..6)
        .map(|_| std::fs::read_to_string(chat_dir().join("../chat_data.jsonl")).unwrap())
        .collect();
    let data_path = copy_to(tmp.path(), "chat.jsonl", &data);
    let out = tmp.path().join("out");
    let a = TrainArgs {
        config: Some(cfg_path),
        init_from: Some(chat_dir()),
        data: Some(data_path),
        steps: Some(4),
        out: Some(out.clone()),
        threads: Some(2),
        no_progress: true,
        ..TrainArgs::default()
    };
    let s = train(&a, &AtomicBool::new(false)).unwrap();
    assert_eq!(s.steps, 4);
    assert!(
        s.final_loss.is_finite() && s.first_loss < 7.0,
        "{} -> {}",
        s.first_loss,
        s.final_loss
    );
    // transformers' folder: config.json in bf16, the weights, the tokenizer files.
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing from the export");
    }
    let cfg = zinf::model::LlamaConfig::from_folder(&out).unwrap();
    assert_eq!(cfg.torch_dtype.as_deref(), Some("bfloat16"));
    let layout = zinf::model::llama::llama_layout(&cfg);
    let w = zinf::model::hf::HfWeights::open(&out).unwrap();
    assert!(w.check(&layout.tensors).unwrap().is_empty());
    // The weights moved from the folder's.
    let before = zinf::model::hf::HfWeights::open(&chat_dir())
        .unwrap()
        .read_range(&layout.tensors, 0..layout.total)
        .unwrap();
    let after = w.read_range(&layout.tensors, 0..layout.total).unwrap();
    assert_ne!(before, after);
}

#[test]
fn estimate_and_config_check_read_the_shape_from_the_folder() {
    use zinf::config::Config;
    use zinf::session::{Overrides, Session};
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/llama_sft_nvme.json");
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("runs/llama_sft/nvme", &tmp.path().display().to_string());
    let cfg = copy_to(tmp.path(), "cfg.json", &text);
    let loaded = Config::load_from(Some(&cfg), Some(&chat_dir())).unwrap();
    let c = &loaded.config;
    // "auto" sizes follow the folder's hidden size (32), not GPT-2's 768.
    assert_eq!(c.zero_optimization.param_persistence_threshold, 320);
    let (plan, est) = Session::plan(c, &Overrides::default()).unwrap();
    assert_eq!(est.model.params, 25888);
    assert_eq!(plan.settings.train.model.vocab_size(), 320);
    assert_eq!(
        plan.settings.train.seq_len, 256,
        "the folder's positions, under the 1024 cap"
    );
    // A zinf.model block that disagrees with the folder is an error naming the key.
    let bad = text.replace("\"zinf\": {", "\"zinf\": { \"model\": { \"n_layer\": 3 },");
    let bad = copy_to(tmp.path(), "bad.json", &bad);
    let e = Config::load_from(Some(&bad), Some(&chat_dir()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("zinf.model.n_layer") && e.contains("3, but the folder"),
        "{e}"
    );
}

#[test]
fn a_llama_run_saved_and_resumed_continues_bit_identically() {
    use std::sync::atomic::AtomicBool;
    use zinf::cli::train::{train, TrainArgs};
    let tmp = tempfile::tempdir().unwrap();
    let nvme = tmp.path().join("nvme");
    let cfg = format!(
        r#"{{
  "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
  "optimizer": {{ "type": "AdamW", "params": {{ "lr": 1e-3 }} }},
  "bf16": {{ "enabled": true }},
  "zero_optimization": {{ "stage": 3,
    "offload_param": {{ "device": "nvme", "nvme_path": "{n}" }},
    "offload_optimizer": {{ "device": "cpu" }} }},
  "zinf": {{ "model": {{ "from": "{m}" }},
            "data": {{ "seq_len": 32, "val_fraction": 0.2, "eval_batches": 1 }},
            "device_memory_budget": "256MiB" }}
}}"#,
        n = nvme.display(),
        m = chat_dir().display()
    );
    let cfg_path = copy_to(tmp.path(), "cfg.json", &cfg);
    let data: String = (0..6)
        .map(|_| std::fs::read_to_string(chat_dir().join("../chat_data.jsonl")).unwrap())
        .collect();
    let data_path = copy_to(tmp.path(), "chat.jsonl", &data);
    let run = |steps: u64, out: &str, save: Option<&Path>, resume: Option<&Path>| {
        let a = TrainArgs {
            config: Some(cfg_path.clone()),
            data: Some(data_path.clone()),
            steps: Some(steps),
            out: Some(tmp.path().join(out)),
            save: save.map(Path::to_path_buf),
            resume: resume.map(Path::to_path_buf),
            threads: Some(2),
            no_progress: true,
            ..TrainArgs::default()
        };
        train(&a, &AtomicBool::new(false)).unwrap()
    };
    let whole = run(4, "whole", None, None);
    let save = tmp.path().join("save");
    let first = run(2, "first", Some(&save), None);
    let second = run(4, "second", None, Some(&save));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&first.losses), bits(&whole.losses[..2]));
    assert_eq!(bits(&second.losses), bits(&whole.losses[2..]));
    // Both runs end with the same weights.
    let read = |dir: &str| {
        let d = tmp.path().join(dir);
        let cfg = zinf::model::LlamaConfig::from_folder(&d).unwrap();
        let l = zinf::model::llama::llama_layout(&cfg);
        zinf::model::hf::HfWeights::open(&d)
            .unwrap()
            .read_range(&l.tensors, 0..l.total)
            .unwrap()
    };
    assert_eq!(bits(&read("whole")), bits(&read("second")));
    // `zinf export` of the save writes what the first run exported at its end.
    let args = zinf::cli::export::ExportArgs {
        from: save.clone(),
        to: tmp.path().join("exported"),
        config: cfg_path.clone(),
        init_from: None,
        max_shard_bytes: 30_000,
    };
    zinf::cli::export::run(&args).unwrap();
    assert!(tmp
        .path()
        .join("exported/model.safetensors.index.json")
        .is_file());
    assert!(tmp.path().join("exported/tokenizer.json").is_file());
    assert_eq!(bits(&read("exported")), bits(&read("first")));
}

#[test]
fn greedy_generation_follows_transformers() {
    use zinf::cli::generate::{generate, GenerateArgs};
    let g = &cases()["greedy"];
    let want: Vec<u32> = g["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let tok = Tokenizer::from_folder(&chat_dir()).unwrap();
    let prompt = g["text"].as_str().unwrap();
    let n_prompt = tok.encode(prompt).unwrap().len();
    let args = GenerateArgs {
        from: chat_dir(),
        chat: false,
        prompt: prompt.into(),
        max_new_tokens: want.len() - n_prompt,
        top_k: 1,
        temperature: 0.0,
        seed: 1,
        device: zinf::config::DeviceChoice::Cpu,
        threads: 2,
        device_memory_gib: 1.0,
    };
    let text = generate(&args, |_| {}).unwrap();
    assert_eq!(text, tok.decode(&want[n_prompt..]).unwrap());
}

#[test]
fn eval_streams_the_folder_and_gives_the_resident_models_loss() {
    use zinf::cli::eval::{eval, EvalArgs};
    let tmp = tempfile::tempdir().unwrap();
    let data: String = (0..6)
        .map(|_| std::fs::read_to_string(chat_dir().join("../chat_data.jsonl")).unwrap())
        .collect();
    let data_path = copy_to(tmp.path(), "chat.jsonl", &data);
    let args = EvalArgs {
        from: chat_dir(),
        data: data_path.clone(),
        format: "auto".into(),
        seq_len: Some(32),
        batch: 2,
        max_batches: Some(3),
        device: zinf::config::DeviceChoice::Cpu,
        threads: 2,
        device_memory_gib: 1.0,
        json: false,
    };
    let r = eval(&args).unwrap();
    assert_eq!(r.batches, 3);
    // The same windows through the resident model, losses weighted by predicted tokens.
    let tok = Tokenizer::from_folder(&chat_dir()).unwrap();
    let chat = ChatTemplate::from_folder(&chat_dir()).unwrap().unwrap();
    let with = TokenizeWith {
        tokenizer: &tok,
        chat: Some(&chat),
    };
    let tokens = formats::load(&data_path, DataFormat::Auto, &with).unwrap();
    let cfg = zinf::model::LlamaConfig::from_folder(&chat_dir()).unwrap();
    let layout = zinf::model::llama::llama_layout(&cfg);
    let p = zinf::model::hf::HfWeights::open(&chat_dir())
        .unwrap()
        .read_range(&layout.tensors, 0..layout.total)
        .unwrap();
    let dev = zinf::device::CpuDevice::new(2, 1 << 30);
    let mut m = zinf::model::Llama::new(&dev, cfg, 2, 32, false).unwrap();
    m.load_params(&dev, &p).unwrap();
    let (mut sum, mut n) = (0.0f64, 0u64);
    for (x, y) in zinf::data::val_batches(&tokens, 2, 32, 3) {
        let k = y
            .iter()
            .filter(|&&t| t != zinf::device::IGNORE_INDEX)
            .count() as u64;
        sum += m.forward_all(&dev, &x, &y).unwrap() as f64 * k as f64;
        n += k;
    }
    assert_eq!(r.tokens, n);
    assert!(
        (r.loss - sum / n as f64).abs() < 1e-6,
        "{} vs {}",
        r.loss,
        sum / n as f64
    );
    assert!((r.perplexity - r.loss.exp()).abs() < 1e-9);
}

#[test]
fn export_replaces_an_earlier_export_and_never_overwrites_its_source() {
    use zinf::model::export::{group_reader, write_folder};
    use zinf::model::{HostParams, ModelError, ModelSpec, ParamDtype};
    let spec = ModelSpec::from_folder(&chat_dir()).unwrap();
    let (tensors, groups) = spec.layout();
    let w = zinf::model::hf::HfWeights::open(&chat_dir()).unwrap();
    let values = w.read_range(&tensors, 0..spec.num_params()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let one = HostParams::from_f32(ParamDtype::Bf16, &values);
    let two = HostParams::from_f32(
        ParamDtype::Bf16,
        &values.iter().map(|x| x * 2.0).collect::<Vec<_>>(),
    );
    // Sharded first, then one file: nothing of the first is left to be read.
    write_folder::<ModelError>(
        &out,
        &spec,
        ParamDtype::Bf16,
        Some(&chat_dir()),
        20_000,
        group_reader(&one, &groups),
    )
    .unwrap();
    write_folder::<ModelError>(
        &out,
        &spec,
        ParamDtype::Bf16,
        Some(&chat_dir()),
        u64::MAX,
        group_reader(&two, &groups),
    )
    .unwrap();
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("safetensors"))
        .collect();
    assert_eq!(names, vec!["model.safetensors".to_string()]);
    let back = zinf::model::hf::HfWeights::open(&out)
        .unwrap()
        .read_range(&tensors, 0..spec.num_params())
        .unwrap();
    assert_eq!(
        HostParams::from_f32(ParamDtype::Bf16, &back).range_bytes(0..back.len()),
        two.range_bytes(0..two.len())
    );
    // Into the folder the run started from: refused, the folder untouched.
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(chat_dir().join(f), src.join(f)).unwrap();
    }
    let before = std::fs::read(src.join("model.safetensors")).unwrap();
    let e = write_folder::<ModelError>(
        &src,
        &spec,
        ParamDtype::Bf16,
        Some(&src.join("..").join("src")),
        u64::MAX,
        group_reader(&two, &groups),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("started from"), "{e}");
    assert_eq!(
        std::fs::read(src.join("model.safetensors")).unwrap(),
        before
    );
    assert!(std::fs::metadata(src.join("tokenizer.json")).unwrap().len() > 0);
}

#[test]
fn a_stored_truncation_in_tokenizer_json_is_ignored_and_an_empty_index_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(chat_dir().join("tokenizer.json")).unwrap())
            .unwrap();
    v["truncation"] = serde_json::json!({"max_length": 4, "strategy": "LongestFirst", "stride": 0, "direction": "Right"});
    std::fs::write(tmp.path().join("tokenizer.json"), v.to_string()).unwrap();
    let tok = Tokenizer::from_folder(tmp.path()).unwrap();
    let text = "To be, or not to be: that is the question.";
    assert_eq!(
        tok.encode(text).unwrap().len(),
        Tokenizer::from_folder(&chat_dir())
            .unwrap()
            .encode(text)
            .unwrap()
            .len()
    );
    assert!(tok.encode(text).unwrap().len() > 4);
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        r#"{"weight_map": {}}"#,
    )
    .unwrap();
    let e = zinf::model::hf::HfWeights::open(tmp.path())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("weight_map names no tensor"), "{e}");
}
