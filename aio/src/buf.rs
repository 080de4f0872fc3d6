//! Aligned buffers: the only type through which bytes enter or leave the engine.
//!
//! An [`AlignedBuf`] is page-aligned memory that either owns its own mapping
//! ([`AlignedBuf::new`]) or holds a lease on a range of a [`BufferPool`](crate::BufferPool)
//! arena. Large mappings are 2 MiB-aligned and backed by huge pages (hugetlb when the system
//! has free ones, else transparent huge pages via `madvise`), which on virtio disks more than
//! doubles O_DIRECT throughput. This file holds the `mmap` code; it knows nothing of rings.

use crate::error::{AioError, Op};
use crate::pool::PoolShared;
use std::ptr::NonNull;
use std::sync::Arc;

/// Bytes per base page; every buffer is at least this aligned.
pub const PAGE_BYTES: usize = 4096;
/// Bytes per huge page; mappings of at least this size are aligned to it.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;

/// How a mapping's pages are backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HugePages {
    /// Explicit hugetlb pages (`MAP_HUGETLB`), guaranteed 2 MiB.
    Hugetlb,
    /// Transparent huge pages requested with `madvise(MADV_HUGEPAGE)`; the kernel decides.
    Transparent,
    /// Base pages only (small mapping, or THP unavailable).
    None,
}

/// One anonymous private mapping, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Region {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) len: usize,
    pub(crate) huge: HugePages,
}

// SAFETY: a Region is plain memory owned by exactly one value; moving it between threads
// moves that ownership.
unsafe impl Send for Region {}
// SAFETY: &Region only exposes the address and length, never the bytes.
unsafe impl Sync for Region {}

pub(crate) fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

impl Region {
    /// Maps at least `len` bytes (rounded to a page, or to 2 MiB when `len >= 2 MiB`).
    /// `populate` faults every page in now, so that the first I/O does not pay for it.
    pub(crate) fn map(len: usize, populate: bool) -> Result<Region, AioError> {
        let huge = len >= HUGE_PAGE_BYTES;
        let map_len = round_up(len.max(1), if huge { HUGE_PAGE_BYTES } else { PAGE_BYTES });
        if huge {
            if let Some(r) = Region::map_hugetlb(map_len) {
                return Ok(r);
            }
        }
        let align = if huge { HUGE_PAGE_BYTES } else { PAGE_BYTES };
        let ptr = map_aligned(map_len, align)?;
        let mut region = Region {
            ptr,
            len: map_len,
            huge: HugePages::None,
        };
        if huge {
            // SAFETY: the range is exactly the mapping we own; MADV_HUGEPAGE only changes how
            // the kernel backs it.
            let rc = unsafe { libc::madvise(ptr.as_ptr().cast(), map_len, libc::MADV_HUGEPAGE) };
            if rc == 0 {
                region.huge = HugePages::Transparent;
            }
        }
        if populate {
            region.populate();
        }
        Ok(region)
    }

    fn map_hugetlb(len: usize) -> Option<Region> {
        // SAFETY: a fresh anonymous mapping with no fixed address cannot alias anything.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(Region {
            ptr: NonNull::new(p.cast())?,
            len,
            huge: HugePages::Hugetlb,
        })
    }

    /// Faults all pages in (MADV_POPULATE_WRITE, or one write per page on older kernels).
    fn populate(&mut self) {
        // SAFETY: the range is our own mapping; populating it only allocates its pages.
        let rc = unsafe {
            libc::madvise(
                self.ptr.as_ptr().cast(),
                self.len,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc != 0 {
            for off in (0..self.len).step_by(PAGE_BYTES) {
                // SAFETY: off < len, inside our mapping, which is readable and writable.
                unsafe { self.ptr.as_ptr().add(off).write_volatile(0) };
            }
        }
    }

    /// Locks the pages in RAM; false (and nothing changed) when the limit forbids it.
    pub(crate) fn lock(&self) -> bool {
        // SAFETY: mlock on our own mapping only pins its pages.
        unsafe { libc::mlock(self.ptr.as_ptr().cast(), self.len) == 0 }
    }
}

/// Locks the pages under `bytes` in RAM (DeepSpeed's `pin_memory` for host arrays that are not
/// pool buffers); false, with nothing changed, when `RLIMIT_MEMLOCK` forbids it. The pages stay
/// locked until they are unmapped (freeing the allocation ends the lock).
pub fn lock_in_ram(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return true;
    }
    // SAFETY: mlock only changes the residency of pages the slice already maps; it reads and
    // writes nothing, and the kernel rounds the range out to whole pages itself.
    unsafe { libc::mlock(bytes.as_ptr().cast(), bytes.len()) == 0 }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len is exactly the mapping this Region created and nothing borrows it
        // any more (every AlignedBuf or pool lease into it has been dropped first).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Maps `len` bytes aligned to `align` by over-mapping and trimming both ends.
fn map_aligned(len: usize, align: usize) -> Result<NonNull<u8>, AioError> {
    let over = len + align - PAGE_BYTES;
    // SAFETY: a fresh anonymous mapping with no fixed address cannot alias anything.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            over,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(AioError::last_os(
            Op::Alloc,
            "<anonymous memory>",
            0,
            len as u64,
        ));
    }
    let start = p as usize;
    let aligned = round_up(start, align);
    let head = aligned - start;
    let tail = over - head - len;
    // SAFETY: both trimmed pieces lie inside the mapping just created and are not used.
    unsafe {
        if head > 0 {
            libc::munmap(p, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    NonNull::new(aligned as *mut u8)
        .ok_or_else(|| AioError::os(Op::Alloc, "<anonymous memory>", 0, len as u64, libc::ENOMEM))
}

/// Who owns the memory behind an [`AlignedBuf`].
#[derive(Debug)]
pub(crate) enum Backing {
    Owned(#[allow(dead_code)] Region),
    Pool {
        pool: Arc<PoolShared>,
        arena_offset: usize,
        reserved_bytes: usize,
    },
}

/// Page-aligned memory for one I/O: owned, `Send`, derefs to `[u8]`.
///
/// Handing it to [`AioEngine::read`](crate::AioEngine::read) or `write` moves it into the
/// request; it comes back from [`Request::wait`](crate::Request::wait) with the completion.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    backing: Backing,
}

// SAFETY: the buffer exclusively owns its memory (or its pool lease); no other handle reads or
// writes those bytes, so moving it to another thread is sound.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reads of bytes nothing else writes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// An unpooled buffer of `len` bytes, zero-filled, 2 MiB-aligned and on huge pages when
    /// `len >= 2 MiB`.
    pub fn new(len: usize) -> Result<AlignedBuf, AioError> {
        let region = Region::map(len, false)?;
        Ok(AlignedBuf {
            ptr: region.ptr,
            len,
            backing: Backing::Owned(region),
        })
    }

    pub(crate) fn from_pool(
        pool: Arc<PoolShared>,
        ptr: NonNull<u8>,
        len: usize,
        arena_offset: usize,
        reserved_bytes: usize,
    ) -> AlignedBuf {
        AlignedBuf {
            ptr,
            len,
            backing: Backing::Pool {
                pool,
                arena_offset,
                reserved_bytes,
            },
        }
    }

    /// Length in bytes (what a read fills and a write sends).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes actually reserved behind this buffer (its length rounded up to the page or huge
    /// page); [`set_len`](Self::set_len) may grow the length up to this.
    pub fn capacity(&self) -> usize {
        match &self.backing {
            Backing::Owned(r) => r.len,
            Backing::Pool { reserved_bytes, .. } => *reserved_bytes,
        }
    }

    /// Changes the length (e.g. to reuse one buffer for shorter I/Os).
    ///
    /// # Panics
    /// If `len` exceeds [`capacity`](Self::capacity): a programmer error.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity(),
            "set_len({len}) beyond capacity {}",
            self.capacity()
        );
        self.len = len;
    }

    /// Address of the first byte.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Mutable address of the first byte (for the kernel to fill).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The pool this buffer is leased from, if any: (pool id, offset in the arena).
    pub(crate) fn pool_lease(&self) -> Option<(u64, usize)> {
        match &self.backing {
            Backing::Owned(_) => None,
            Backing::Pool {
                pool, arena_offset, ..
            } => Some((pool.id, *arena_offset)),
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len <= capacity bytes of initialized (zero-filled or
        // written) memory that this buffer exclusively owns.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self guarantees no other reference exists.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Backing::Pool {
            pool,
            arena_offset,
            reserved_bytes,
        } = &self.backing
        {
            pool.release(*arena_offset, *reserved_bytes);
        }
    }
}
