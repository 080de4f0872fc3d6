//! Ranks and their collectives, on CPU ranks (threads of this process) and, for the
//! rendezvous, separate processes: results in rank order whatever the arrival order, a rank
//! that fails or never comes is an error for the others (never a hang), the launchers'
//! variables name their problems.

use std::time::{Duration, Instant};
use zinf::device::{CpuDevice, Device, DeviceBuffer, HostSlice};
use zinf::dist::env::DistEnv;
use zinf::dist::rendezvous::{join, rendezvous, serve};
use zinf::dist::threads::{ThreadComm, ThreadGroup};
use zinf::dist::{all_reduce_values, Collective, DistError};

fn buf(dev: &CpuDevice, v: &[f32]) -> zinf::device::CpuBuffer {
    let mut b = dev.alloc("t", v.len()).unwrap();
    dev.wait(dev.upload(&mut b, 0, HostSlice::F32(v)).unwrap())
        .unwrap();
    b
}

/// Runs `f(rank, comm)` on `world` threads and returns their results in rank order.
fn on_ranks<T: Send + 'static>(
    comms: Vec<ThreadComm>,
    f: impl Fn(usize, ThreadComm) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let handles: Vec<_> = comms
        .into_iter()
        .enumerate()
        .map(|(rank, c)| {
            let f = f.clone();
            std::thread::spawn(move || f(rank, c))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn all_gather_reduce_scatter_all_reduce_broadcast_on_thread_ranks() {
    let world = 4;
    let n = 3;
    let out = on_ranks(ThreadGroup::new(world), move |rank, c| {
        let dev = CpuDevice::new(1, 1 << 20);
        // Ranks arrive in a scrambled order: results must not depend on it.
        std::thread::sleep(Duration::from_millis((3 - rank as u64) * 15));
        let mine: Vec<f32> = (0..n).map(|i| (rank * 10 + i) as f32).collect();
        let send = buf(&dev, &mine);
        let mut gathered = dev.alloc("t", 2 + n * world).unwrap();
        c.all_gather(&dev, &send, 0, n, &mut gathered, 2).unwrap();
        let full: Vec<f32> = (0..n * world).map(|i| (rank + i) as f32).collect();
        let send_full = buf(&dev, &full);
        let mut part = dev.alloc("t", n).unwrap();
        c.reduce_scatter(&dev, &send_full, 0, n, &mut part, 0)
            .unwrap();
        let mut sum = buf(&dev, &[rank as f32, 1.0]);
        c.all_reduce(&dev, &mut sum, 0, 2).unwrap();
        let mut b = buf(&dev, &[rank as f32; 2]);
        c.broadcast(&dev, &mut b, 1, 1, 2).unwrap();
        c.barrier(&dev).unwrap();
        let mut host = [rank as f32 * 0.5];
        all_reduce_values(&c, &dev, &mut host).unwrap();
        (
            gathered.as_slice().to_vec(),
            part.as_slice().to_vec(),
            sum.as_slice().to_vec(),
            b.as_slice().to_vec(),
            host[0],
        )
    });
    for (rank, (gathered, part, sum, b, host)) in out.into_iter().enumerate() {
        let want: Vec<f32> = (0..world)
            .flat_map(|r| (0..n).map(move |i| (r * 10 + i) as f32))
            .collect();
        assert_eq!(&gathered[2..], &want[..], "rank {rank} all_gather");
        assert_eq!(
            &gathered[..2],
            &[0.0, 0.0],
            "rank {rank}: nothing before recv_off"
        );
        // Element i of this rank's partition: sum over ranks r of (r + rank n + i).
        let want: Vec<f32> = (0..n)
            .map(|i| (0..world).map(|r| (r + rank * n + i) as f32).sum())
            .collect();
        assert_eq!(part, want, "rank {rank} reduce_scatter");
        assert_eq!(sum, vec![6.0, 4.0], "rank {rank} all_reduce");
        assert_eq!(
            b,
            vec![rank as f32, 2.0],
            "rank {rank} broadcast of root 2's element 1"
        );
        assert_eq!(host, 3.0, "rank {rank} host values");
    }
}

#[test]
fn sums_run_in_rank_order() {
    // (((1e8 + 1) - 1e8) + 1) is 1 in f32; other orders give 0 or 2.
    let values = [1e8f32, 1.0, -1e8, 1.0];
    for _ in 0..5 {
        let out = on_ranks(ThreadGroup::new(4), move |rank, c| {
            let dev = CpuDevice::new(1, 1 << 20);
            std::thread::sleep(Duration::from_millis(((rank * 7) % 4) as u64 * 5));
            let mut b = buf(&dev, &[values[rank]]);
            c.all_reduce(&dev, &mut b, 0, 1).unwrap();
            b.as_slice()[0]
        });
        assert_eq!(out, vec![1.0; 4]);
    }
}

#[test]
fn a_rank_that_fails_stops_the_others_with_its_name() {
    let start = Instant::now();
    let out = on_ranks(ThreadGroup::new(3), |rank, c| {
        let dev = CpuDevice::new(1, 1 << 20);
        let mut b = buf(&dev, &[1.0]);
        c.all_reduce(&dev, &mut b, 0, 1).unwrap();
        if rank == 1 {
            // Rank 1's run fails here: its comm is dropped with the thread's state.
            return Err("rank 1 failed".to_string());
        }
        c.all_reduce(&dev, &mut b, 0, 1)
            .map_err(|e| e.to_string())?;
        Ok(())
    });
    assert!(start.elapsed() < Duration::from_secs(30), "no hang");
    for (rank, r) in out.iter().enumerate() {
        let e = r.as_ref().unwrap_err();
        if rank != 1 {
            assert!(e.contains("rank 1 left the group"), "rank {rank}: {e}");
        }
    }
}

#[test]
fn a_rank_that_never_comes_times_out_naming_it() {
    let comms = ThreadGroup::with_timeout(3, Duration::from_millis(300));
    let mut it = comms.into_iter();
    let (c0, c1, c2) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let h = std::thread::spawn(move || {
        let dev = CpuDevice::new(1, 1 << 20);
        c1.barrier(&dev)
    });
    let dev = CpuDevice::new(1, 1 << 20);
    let e = c0.barrier(&dev).unwrap_err();
    assert!(
        matches!(e, DistError::Timeout { .. } | DistError::Aborted { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("[2]"), "names the missing rank: {e}");
    assert!(h.join().unwrap().is_err());
    drop(c2);
}

#[test]
fn wrong_extents_are_errors() {
    let mut comms = ThreadGroup::new(1);
    let c = comms.pop().unwrap();
    let dev = CpuDevice::new(1, 1 << 20);
    let send = buf(&dev, &[1.0, 2.0]);
    let mut recv = dev.alloc("t", 1).unwrap();
    let e = c.all_gather(&dev, &send, 0, 2, &mut recv, 0).unwrap_err();
    assert!(e.to_string().contains("recv"), "{e}");
    assert_eq!(recv.len(), 1);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn rendezvous_hands_rank_0s_blob_to_every_rank() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let world = 4;
    let peers: Vec<_> = (1..world)
        .map(|rank| {
            let addr = addr.clone();
            std::thread::spawn(move || join(&addr, rank, world, Duration::from_secs(20)))
        })
        .collect();
    serve(&listener, world, b"nccl-id", Duration::from_secs(20)).unwrap();
    for p in peers {
        assert_eq!(p.join().unwrap().unwrap(), b"nccl-id");
    }
}

#[test]
fn rendezvous_refuses_a_missing_rank_and_a_wrong_world() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let a = addr.clone();
    let one = std::thread::spawn(move || join(&a, 1, 3, Duration::from_secs(2)));
    let e = serve(&listener, 3, b"x", Duration::from_millis(500)).unwrap_err();
    assert!(
        e.to_string().contains("ranks [2] did not reach rank 0"),
        "{e}"
    );
    assert!(
        one.join().unwrap().is_err(),
        "the waiting rank gets an error too"
    );

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let other = std::thread::spawn(move || join(&addr, 1, 3, Duration::from_secs(5)));
    let e = serve(&listener, 2, b"x", Duration::from_secs(5)).unwrap_err();
    assert!(e.to_string().contains("WORLD_SIZE=3"), "{e}");
    assert!(other.join().unwrap().is_err());

    let port = free_port();
    let e = join(
        &format!("127.0.0.1:{port}"),
        1,
        2,
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(e.to_string().contains("could not reach rank 0"), "{e}");
}

/// Ranks as separate processes: this test binary runs itself again as ranks 1 and 2 with the
/// launcher's variables set, as torchrun would start them.
#[test]
fn rendezvous_across_processes_from_launcher_variables() {
    if std::env::var_os("ZINF_TEST_RENDEZVOUS_CHILD").is_some() {
        let env = DistEnv::from_env().expect("child env");
        let blob = rendezvous(&env, b"", Duration::from_secs(30)).expect("child rendezvous");
        assert_eq!(blob, b"from rank 0");
        return;
    }
    let port = free_port();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (1..3)
        .map(|rank| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "rendezvous_across_processes_from_launcher_variables",
                ])
                .env("ZINF_TEST_RENDEZVOUS_CHILD", "1")
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "3")
                .env("LOCAL_RANK", rank.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let env = DistEnv::from_lookup(|k| match k {
        "RANK" => Some("0".into()),
        "WORLD_SIZE" => Some("3".into()),
        "MASTER_ADDR" => Some("127.0.0.1".into()),
        "MASTER_PORT" => Some(port.to_string()),
        _ => None,
    })
    .unwrap();
    let blob = rendezvous(&env, b"from rank 0", Duration::from_secs(30)).unwrap();
    assert_eq!(blob, b"from rank 0");
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a child rank failed");
    }
}
