//! `make bench`, "Image" table: how big the container image's own files are (what
//! scripts/build-image-rootfs.sh assembles and the Dockerfile copies onto debian:bookworm-slim),
//! and how much of each a cold start touches. `BENCH_ONLY=image cargo bench --bench forecast`
//! prints it alone.
//!
//! A cold start here is the image's binary, run from a fresh rootfs with an empty environment as
//! `serve`, answering one forecast: libtorch and the bundled model loaded, one forward run.
//!
//! Two measures per file, because neither alone is the pages the code touched:
//! - **mapped** (`Rss` of the file's mappings in /proc/PID/smaps, summed): pages in this process's
//!   page tables. The kernel maps file pages in batches (fault-around, 64 KB; on recent kernels a
//!   whole large page-cache folio), so this is an upper bound on the pages touched, and it varies
//!   from start to start with how the page cache happens to be laid out. The least of
//!   [`STARTS`] starts is reported: the closest to what was touched.
//! - **read** (page-cache residency from mincore(2), after evicting the file first): what the
//!   kernel read from disk for this start, readahead included. Page-cache residency is global, not
//!   per process, but the rootfs is a private copy no other process opens, so here it is this
//!   start's alone. It mostly shows the disk's readahead window (`lsblk -o NAME,RA`), not the code.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Starts measured; the least `Rss` of these is reported.
const STARTS: usize = 5;

pub fn table() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // `cargo bench` builds the binary with the release profile: the one the Dockerfile ships.
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_lstm-forecast"));
    let libtorch = std::fs::canonicalize(repo.join(".libtorch")).expect("make libtorch first");
    let scratch = tempfile::tempdir().unwrap();
    let rootfs = scratch.path().join("rootfs");
    let status = Command::new(repo.join("scripts/build-image-rootfs.sh"))
        .arg(&rootfs)
        .env("BINARY", &binary)
        .env("LIBTORCH", &libtorch)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "build-image-rootfs.sh failed");
    // smaps names files by their canonical path.
    let rootfs = std::fs::canonicalize(&rootfs).unwrap();
    let files = regular_files(&rootfs);
    // Before pruning: every file libtorch ships and the binary as cargo leaves it (what the
    // script copied until it followed DT_NEEDED and stripped).
    let before: u64 = std::fs::read_dir(libtorch.join("lib"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum::<u64>()
        + binary.metadata().unwrap().len();

    let mut mapped: BTreeMap<PathBuf, u64> = BTreeMap::new();
    let mut read: BTreeMap<PathBuf, u64> = BTreeMap::new();
    let mut base_mapped = u64::MAX;
    for start in 0..STARTS {
        for file in &files {
            evict(file);
        }
        let (rss, base) = cold_start(&rootfs);
        base_mapped = base_mapped.min(base);
        for file in &files {
            let bytes = rss.get(file).copied().unwrap_or(0);
            let least = mapped.entry(file.clone()).or_insert(bytes);
            *least = (*least).min(bytes);
            if start == 0 {
                read.insert(file.clone(), resident_bytes(file));
            }
        }
    }

    let mb = |bytes: u64| match bytes {
        0..1_000_000 => format!("{:.0} kB", bytes as f64 / 1e3),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    };
    let share =
        |part: u64, whole: u64| format!("{:.0}%", part as f64 / whole.max(1) as f64 * 100.0);
    println!();
    println!("## Image (scripts/build-image-rootfs.sh: the files the Dockerfile adds to debian:bookworm-slim)");
    println!();
    println!("| file | size | mapped by a cold start (least of {STARTS}) | share | read from disk (readahead included) |");
    println!("|---|---:|---:|---:|---:|");
    let (mut size_total, mut mapped_total, mut read_total) = (0, 0, 0);
    for file in &files {
        let size = file.metadata().unwrap().len();
        let (m, r) = (mapped[file], read[file]);
        size_total += size;
        mapped_total += m;
        read_total += r;
        println!(
            "| {} | {} | {} | {} | {} |",
            file.strip_prefix(&rootfs).unwrap().display(),
            mb(size),
            mb(m),
            share(m, size),
            mb(r)
        );
    }
    println!(
        "| **image files, total** | **{}** | **{}** | {} | {} |",
        mb(size_total),
        mb(mapped_total),
        share(mapped_total, size_total),
        mb(read_total)
    );
    println!(
        "| before pruning: all of libtorch's lib/, unstripped binary | {} |  |  |  |",
        mb(before)
    );
    println!(
        "| base-image libraries (glibc, libstdc++, libgcc_s; this machine's) |  | {} |  |  |",
        mb(base_mapped)
    );
    println!();
    println!("A cold start: `serve` from the rootfs with an empty environment, one forecast answered. Mapped: smaps `Rss`, an upper bound on the pages touched");
    println!("(the kernel maps in batches); read: page-cache residency after evicting the private copy first (mincore), mostly this disk's readahead.");
}

/// Runs `serve` from the rootfs, answers one forecast, and returns the `Rss` of each mapped
/// file under the rootfs, and of every other mapped file (the base image's libraries) in total.
fn cold_start(rootfs: &Path) -> (BTreeMap<PathBuf, u64>, u64) {
    let mut command = Command::new(rootfs.join("opt/lstm-forecast/bin/lstm-forecast"));
    command
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env_clear()
        .env("THREADS", "1")
        .env("RUST_LOG", "info");
    let (mut child, address) = super::spawn_serve(command);
    let values: Vec<f64> = (0..168).map(|t| 15.0 + (t % 24) as f64).collect();
    let body = serde_json::json!({"series": [{"values": values}]}).to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "POST /v1/forecast HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let mut rss: BTreeMap<PathBuf, u64> = BTreeMap::new();
    let mut base = 0;
    let mut current: Option<PathBuf> = None;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A mapping's header: "start-end perms offset dev inode [path]"; its fields follow.
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            current = fields
                .get(5)
                .filter(|p| p.starts_with('/'))
                .map(PathBuf::from);
        } else if fields.first() == Some(&"Rss:") {
            let bytes = fields[1].parse::<u64>().unwrap() * 1024;
            match &current {
                Some(path) if path.starts_with(rootfs) => {
                    *rss.entry(path.clone()).or_default() += bytes
                }
                Some(_) => base += bytes,
                None => {}
            }
        }
    }
    (rss, base)
}

fn regular_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files.extend(regular_files(&entry.path()));
        } else if kind.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    files
}

/// Drops one file's pages from the page cache (written back first: dirty pages would stay).
fn evict(file: &Path) {
    let f = std::fs::File::open(file).unwrap();
    f.sync_data().unwrap();
    // SAFETY: a valid open descriptor; the advice only drops clean cached pages of this file.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

/// Bytes of `file` in the page cache, from mincore(2) over a mapping that touches nothing.
fn resident_bytes(file: &Path) -> u64 {
    let f = std::fs::File::open(file).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    if len == 0 {
        return 0;
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let mut pages = vec![0u8; len.div_ceil(page)];
    // SAFETY: a read-only shared mapping of a file we hold open, unmapped before returning;
    // mincore writes one byte per page of it into `pages`, which is that long.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED, "mmap {}", file.display());
        let rc = libc::mincore(addr, len, pages.as_mut_ptr());
        libc::munmap(addr, len);
        assert_eq!(rc, 0, "mincore {}", file.display());
    }
    pages.iter().filter(|p| *p & 1 == 1).count() as u64 * page as u64
}
