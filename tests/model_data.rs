//! Data: GPT-2 BPE ids, llm.c `.bin` files, the split, and seeded batches.

use zinf::data::{
    llmc_bin_bytes, load_tokens, val_batches, Batcher, Dataset, Tokenizer, BUILTIN_TEXT,
};

#[test]
fn gpt2_bpe_gives_the_known_ids_and_round_trips() {
    let tok = Tokenizer::gpt2();
    assert_eq!(tok.encode("Hello world").unwrap(), vec![15496, 995]);
    let text = "The cat sat on the mat.\nÜber naïve café.";
    assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
}

#[test]
fn text_and_llmc_bin_files_give_the_same_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let text = &BUILTIN_TEXT[..4000];
    std::fs::write(dir.path().join("a.txt"), text).unwrap();
    let from_text = load_tokens(&dir.path().join("a.txt")).unwrap();
    assert_eq!(from_text, Tokenizer::gpt2().encode(text).unwrap());
    std::fs::write(dir.path().join("a.bin"), llmc_bin_bytes(&from_text)).unwrap();
    assert_eq!(load_tokens(&dir.path().join("a.bin")).unwrap(), from_text);
    std::fs::write(dir.path().join("bad.bin"), vec![0u8; 2048]).unwrap();
    let err = load_tokens(&dir.path().join("bad.bin"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad magic"), "{err}");
}

#[test]
fn batches_are_deterministic_from_the_seed_and_shifted_by_one() {
    let tokens: Vec<u32> = (0..1000).collect();
    let ds = Dataset::split(tokens, 0.1, 16).unwrap();
    assert_eq!(ds.val.len(), 100);
    assert_eq!(ds.train.len(), 900);
    let (mut a, mut b, mut c) = (
        Batcher::new(7, 4, 16),
        Batcher::new(7, 4, 16),
        Batcher::new(8, 4, 16),
    );
    let (x, y) = a.next_batch(&ds.train);
    assert_eq!((x.clone(), y.clone()), b.next_batch(&ds.train));
    assert_ne!(x, c.next_batch(&ds.train).0, "another seed, other windows");
    for (xi, yi) in x.iter().zip(&y) {
        assert_eq!(xi + 1, *yi, "targets are the inputs shifted by one token");
    }
    let v = val_batches(&ds.val, 2, 16, 10);
    assert_eq!(v.len(), 3);
    assert_eq!(v[0].0[0], 900);
}

#[test]
fn too_little_data_is_a_clear_error() {
    let err = Dataset::split(vec![1, 2, 3], 0.1, 16)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("too few"), "{err}");
}
