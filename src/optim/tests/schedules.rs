//! Schedulers: values at chosen steps against DeepSpeed's closed forms
//! (`deepspeed/runtime/lr_schedules.py`), construction-time values, resume, and the JSON block.

use super::super::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1e-12)
}

fn check(s: &LrScheduler, points: &[(i64, f64)]) {
    for &(it, want) in points {
        let got = s.lr_at(it);
        assert!(close(got, want), "iteration {it}: got {got}, want {want}");
    }
}

fn sched(c: SchedulerConfig) -> LrScheduler {
    LrScheduler::new(c, 2e-3).unwrap()
}

#[test]
fn warmup_lr_log_and_linear() {
    let s = sched(SchedulerConfig::WarmupLR(WarmupLRConfig::default()));
    check(
        &s,
        &[
            (-1, 0.0),
            (0, 0.0),
            (9, 1e-3 / 3.0),
            (99, 2e-3 / 3.0),
            (999, 1e-3),
            (5000, 1e-3),
        ],
    );
    let c = WarmupLRConfig {
        warmup_min_lr: 1e-4,
        warmup_max_lr: 1e-3,
        warmup_num_steps: 100,
        warmup_type: WarmupType::Linear,
    };
    let s = sched(SchedulerConfig::WarmupLR(c));
    check(
        &s,
        &[
            (-1, 1e-4),
            (0, 1e-4),
            (50, 5.5e-4),
            (99, 1e-4 + 9e-4 * 0.99),
            (100, 1e-3),
        ],
    );
    // DeepSpeed clamps warmup_num_steps to at least 2.
    let s = sched(SchedulerConfig::WarmupLR(WarmupLRConfig {
        warmup_num_steps: 1,
        ..c
    }));
    check(&s, &[(1, 5.5e-4), (2, 1e-3)]);
}

#[test]
fn warmup_decay_lr_decays_linearly_to_zero() {
    let c = WarmupDecayLRConfig {
        warmup_num_steps: 100,
        warmup_max_lr: 1e-3,
        warmup_type: WarmupType::Linear,
        ..WarmupDecayLRConfig::new(1100)
    };
    let s = sched(SchedulerConfig::WarmupDecayLR(c));
    check(
        &s,
        &[
            (-1, 0.0),
            (50, 5e-4),
            (100, 1e-3),
            (600, 5e-4),
            (1099, 1e-6),
            (1100, 0.0),
            (2000, 0.0),
        ],
    );
}

#[test]
fn warmup_cosine_lr_scales_the_optimizer_lr() {
    let c = WarmupCosineLRConfig {
        warmup_num_steps: 100,
        warmup_min_ratio: 0.1,
        cos_min_ratio: 0.01,
        warmup_type: WarmupType::Linear,
        ..WarmupCosineLRConfig::new(1100)
    };
    let s = sched(SchedulerConfig::WarmupCosineLR(c));
    let at_100 = 2e-3 * (0.01 + 0.99 * (1.0 + (std::f64::consts::PI / 1000.0).cos()) / 2.0);
    check(
        &s,
        &[
            (-1, 0.0),
            (0, 2e-4),
            (50, 1.1e-3),
            (100, at_100),
            (599, 1.01e-3),
            (1099, 2e-5),
        ],
    );
    // Log warmup: ratio log(it+1)/log(warmup).
    let s = sched(SchedulerConfig::WarmupCosineLR(WarmupCosineLRConfig::new(
        10_000,
    )));
    check(&s, &[(9, 2e-3 * (10f64.ln() / 1000f64.ln()))]);
}

#[test]
fn past_the_end_each_schedule_does_what_deepspeeds_does() {
    // WarmupCosineLR: DeepSpeed clamps the cosine's progress, so the lr stays at the floor
    // instead of climbing back to the peak (it used to reach 2e-3 again at step 2099).
    let c = WarmupCosineLRConfig {
        warmup_num_steps: 100,
        cos_min_ratio: 0.01,
        warmup_type: WarmupType::Linear,
        ..WarmupCosineLRConfig::new(1100)
    };
    let s = sched(SchedulerConfig::WarmupCosineLR(c));
    let floor = 2e-3 * 0.01;
    check(
        &s,
        &[(1099, floor), (1500, floor), (2099, floor), (50_000, floor)],
    );
    // No decay window (total <= warmup): the floor right after warmup, no division by zero.
    let short = WarmupCosineLRConfig {
        warmup_num_steps: 100,
        cos_min_ratio: 0.01,
        ..WarmupCosineLRConfig::new(100)
    };
    let s = sched(SchedulerConfig::WarmupCosineLR(short));
    check(&s, &[(100, floor), (101, floor)]);
    // WarmupDecayLR stays at 0, WarmupLR at its max.
    let d = WarmupDecayLRConfig {
        warmup_num_steps: 10,
        warmup_max_lr: 1e-3,
        ..WarmupDecayLRConfig::new(100)
    };
    check(
        &sched(SchedulerConfig::WarmupDecayLR(d)),
        &[(100, 0.0), (10_000, 0.0)],
    );
    let w = WarmupLRConfig {
        warmup_num_steps: 10,
        ..WarmupLRConfig::default()
    };
    check(&sched(SchedulerConfig::WarmupLR(w)), &[(10_000, 1e-3)]);
}

#[test]
fn one_cycle_lr_and_momentum() {
    let c = OneCycleConfig {
        cycle_first_step_size: 10,
        decay_step_size: 5,
        decay_lr_rate: 0.5,
        decay_mom_rate: 0.1,
        cycle_min_mom: 0.85,
        cycle_max_mom: 0.95,
        ..OneCycleConfig::new(1e-4, 1e-3)
    };
    let s = sched(SchedulerConfig::OneCycle(c));
    check(
        &s,
        &[
            (-1, 1e-4),
            (4, 5.5e-4),
            (9, 1e-3),
            (14, 5.5e-4),
            (19, 1e-4),
            (20, 1e-4 / 1.1),
            (29, 5e-5),
        ],
    );
    for (it, want) in [
        (-1, 0.85),
        (4, 0.90),
        (9, 0.85),
        (19, 0.95),
        (20, 0.95 * 1.02),
    ] {
        let (b1, b2) = s.mom_at(it).unwrap();
        assert!(close(b1, want), "momentum at {it}: {b1} vs {want}");
        assert_eq!(b2, 0.99);
    }
    let no_decay = sched(SchedulerConfig::OneCycle(OneCycleConfig {
        decay_step_size: 0,
        ..c
    }));
    check(&no_decay, &[(25, 1e-4)]);
    assert!(close(no_decay.mom_at(25).unwrap().0, 0.95));
    let no_mom = OneCycleConfig {
        cycle_momentum: false,
        ..c
    };
    assert_eq!(sched(SchedulerConfig::OneCycle(no_mom)).mom_at(3), None);
}

#[test]
fn lr_range_test_continuous_and_staircase() {
    let c = LRRangeTestConfig {
        lr_range_test_step_size: 10,
        lr_range_test_step_rate: 0.5,
        ..LRRangeTestConfig::default()
    };
    check(
        &sched(SchedulerConfig::LRRangeTest(c)),
        &[(-1, 1e-3), (4, 1.25e-3), (9, 1.5e-3)],
    );
    let st = LRRangeTestConfig {
        lr_range_test_staircase: true,
        ..c
    };
    check(
        &sched(SchedulerConfig::LRRangeTest(st)),
        &[(4, 1e-3), (8, 1e-3), (9, 1.5e-3), (19, 2e-3)],
    );
}

#[test]
fn step_get_lr_and_resume_agree_with_lr_at() {
    let c = SchedulerConfig::WarmupDecayLR(WarmupDecayLRConfig::new(500));
    let mut s = sched(c);
    assert_eq!(s.get_lr(), s.lr_at(-1));
    for _ in 0..37 {
        s.step();
    }
    assert_eq!(s.last_batch_iteration(), 36);
    assert_eq!(s.get_lr(), s.lr_at(36));
    let saved = serde_json::to_string(&s.state()).unwrap();
    let mut r = sched(c);
    r.load_state(serde_json::from_str(&saved).unwrap());
    s.step();
    r.step();
    assert_eq!(s.get_lr(), r.get_lr());
    assert!(s.get_lr() > 0.0);
}

#[test]
fn scheduler_block_parses_as_deepspeed_writes_it() {
    let c: SchedulerConfig = serde_json::from_str(
        r#"{"type": "WarmupLR", "params": {"warmup_max_lr": 0.01, "warmup_type": "linear"}}"#,
    )
    .unwrap();
    let SchedulerConfig::WarmupLR(w) = c else {
        panic!("{c:?}")
    };
    assert_eq!(
        (w.warmup_min_lr, w.warmup_max_lr, w.warmup_num_steps),
        (0.0, 0.01, 1000)
    );
    assert_eq!(w.warmup_type, WarmupType::Linear);
    let e = serde_json::from_str::<SchedulerConfig>(r#"{"type": "WarmupDecayLR", "params": {}}"#);
    assert!(e.unwrap_err().to_string().contains("total_num_steps"));
    let o: SchedulerConfig = serde_json::from_str(
        r#"{"type": "OneCycle", "params": {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3}}"#,
    )
    .unwrap();
    assert_eq!(
        o,
        SchedulerConfig::OneCycle(OneCycleConfig::new(1e-4, 1e-3))
    );
}

#[test]
fn undefined_schedules_are_refused() {
    let bad = LRRangeTestConfig {
        lr_range_test_step_size: 0,
        ..LRRangeTestConfig::default()
    };
    assert!(LrScheduler::new(SchedulerConfig::LRRangeTest(bad), 1e-3).is_err());
    let bad = OneCycleConfig {
        cycle_first_step_size: 0,
        ..OneCycleConfig::new(1e-4, 1e-3)
    };
    assert!(LrScheduler::new(SchedulerConfig::OneCycle(bad), 1e-3).is_err());
}
