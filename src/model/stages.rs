//! The [`Model`] trait the ZeRO-3 engine is generic over: an ordered list of parameter groups
//! (one flat layout), and the model's forward and backward cut into *stages*, each naming the
//! groups it fetches, releases, and whose gradients it installs and hands out.
//!
//! The engine's loops are this list read in order (forward) and in its mirror (backward): for
//! every stage, fetch its groups, run it, release its groups — with every fetch, release and
//! gradient move visible in the loop (`engine/mod.rs`). A model implements the ops; it does not
//! fetch, release, prefetch or move gradients itself. GPT-2 implements it (`gpt.rs`); the Llama
//! family is next.
//!
//! Stages follow DeepSpeed's ZeRO-3 module hooks (`deepspeed/runtime/zero/parameter_offload.py`:
//! gather a module's parameters before its forward, release them after), made explicit: a
//! stage is what DeepSpeed calls a submodule.

use super::ModelError;
use crate::device::{Device, DeviceBuffer};
use std::ops::Range;

/// One parameter group: a contiguous range of the flat layout that is fetched to the device
/// and released as one (a transformer block, the embeddings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSpec {
    /// For logs and traces, e.g. `h.3` or `embed`.
    pub name: String,
    /// Elements of the flat parameter array (the same offsets serve device buffers, pinned
    /// buffers and NVMe extents).
    pub range: Range<usize>,
    /// Flat offsets where the group's tensors begin, ascending (the first is
    /// `range.start`): optimizer units group whole tensors, as DeepSpeed's sub-groups do.
    pub tensor_starts: Vec<usize>,
}

/// One step of forward or backward, with the groups the engine moves around it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stage {
    /// For the timeline, e.g. `block forward`.
    pub name: &'static str,
    /// Groups whose parameters the stage reads: fetched right before it.
    pub fetch: Vec<usize>,
    /// Backward: groups whose gradient buffers are installed right before it (zeros on the
    /// first micro-batch, the sums so far after).
    pub grads_in: Vec<usize>,
    /// Groups released right after it (kept on the device when persistent or reused soon).
    pub release: Vec<usize>,
    /// Backward: groups whose gradients are complete after it: downloaded right after.
    pub grads_out: Vec<usize>,
    /// Backward under activation checkpointing: the forward stage to run again first.
    pub recompute: Option<usize>,
}

/// The forward and backward stage lists of a model.
#[derive(Clone, Debug, Default)]
pub struct Stages {
    pub forward: Vec<Stage>,
    pub backward: Vec<Stage>,
}

impl Stages {
    /// Checks the lists against `n_groups`: every group is fetched before it is released, every
    /// group's gradients go in before they come out, and each exactly once per backward.
    /// A failure is a programmer error in the model (panics with the stage name).
    pub fn assert_consistent(&self, n_groups: usize) {
        let mut fetched = vec![false; n_groups];
        for st in self.forward.iter().chain(&self.backward) {
            for &g in &st.fetch {
                fetched[g] = true;
            }
            for &g in &st.release {
                assert!(
                    fetched[g],
                    "{}: releases group {g} it never fetched",
                    st.name
                );
                fetched[g] = false;
            }
        }
        let mut grads = vec![0u8; n_groups]; // 0 none, 1 installed, 2 out
        for st in &self.backward {
            for &g in &st.grads_in {
                assert_eq!(grads[g], 0, "{}: gradients of {g} installed twice", st.name);
                grads[g] = 1;
            }
            for &g in &st.grads_out {
                assert_eq!(grads[g], 1, "{}: gradients of {g} out before in", st.name);
                grads[g] = 2;
            }
        }
        assert!(
            grads.iter().all(|&s| s == 2),
            "every group's gradients leave the device once per backward"
        );
    }

    /// The backward stage whose `grads_in` comes last (where the update after backward can
    /// start reading its first optimizer state while that stage computes).
    pub fn last_grads_in(&self) -> Option<usize> {
        self.backward.iter().rposition(|s| !s.grads_in.is_empty())
    }
}

/// What a decoder stack's stage runs (see [`decoder_stages`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DecoderStep {
    Embed,
    Block(usize),
    Head,
    Loss,
}

impl DecoderStep {
    /// Forward stage `stage` of [`decoder_stages`] with `n_layer` blocks.
    pub(crate) fn forward(stage: usize, n_layer: usize) -> Self {
        match stage {
            0 => DecoderStep::Embed,
            s if s <= n_layer => DecoderStep::Block(s - 1),
            s if s == n_layer + 1 => DecoderStep::Head,
            _ => DecoderStep::Loss,
        }
    }

    /// Backward stage `stage` (the head's backward starts from the loss; blocks last first).
    pub(crate) fn backward(stage: usize, n_layer: usize) -> Self {
        match stage {
            0 => DecoderStep::Head,
            s if s <= n_layer => DecoderStep::Block(n_layer - s),
            _ => DecoderStep::Embed,
        }
    }
}

/// The stages of a decoder stack — GPT-2's and the Llama family's shape — over groups `0`
/// (embeddings), `1..=L` (blocks), `L+1` (final norm and, untied, the LM head).
///
/// Forward: embed, each block, the head, the loss. `tied`: the head reads the embeddings,
/// which stay fetched for the head's backward, and the head's backward installs both gradient
/// buffers (the embedding backward completes the embeddings' last). Untied: the embeddings are
/// released after the embedding and their gradients installed only for its backward.
pub(crate) fn decoder_stages(n_layer: usize, tied: bool) -> Stages {
    let (embed, fin) = (0, n_layer + 1);
    let mut forward = vec![Stage {
        name: "embed forward",
        fetch: vec![embed],
        release: vec![embed],
        ..Stage::default()
    }];
    for l in 0..n_layer {
        forward.push(Stage {
            name: "block forward",
            fetch: vec![1 + l],
            release: vec![1 + l],
            ..Stage::default()
        });
    }
    forward.push(Stage {
        name: "head forward",
        fetch: if tied { vec![fin, embed] } else { vec![fin] },
        ..Stage::default()
    });
    forward.push(Stage {
        name: "loss",
        ..Stage::default()
    });
    let mut backward = vec![Stage {
        name: "head backward",
        grads_in: if tied { vec![embed, fin] } else { vec![fin] },
        release: if tied { vec![fin, embed] } else { vec![fin] },
        grads_out: vec![fin],
        ..Stage::default()
    }];
    for l in (0..n_layer).rev() {
        backward.push(Stage {
            name: "block backward",
            fetch: vec![1 + l],
            grads_in: vec![1 + l],
            release: vec![1 + l],
            grads_out: vec![1 + l],
            recompute: Some(1 + l),
        });
    }
    backward.push(Stage {
        name: "embed backward",
        grads_in: if tied { vec![] } else { vec![embed] },
        grads_out: vec![embed],
        ..Stage::default()
    });
    Stages { forward, backward }
}

/// Initial values of a range of the flat parameter array, called with consecutive group
/// ranges in layout order: the seeded initialisation, or a checkpoint read group by group
/// (which can fail: a truncated file, an I/O error).
pub type ParamSource = Box<dyn FnMut(Range<usize>) -> Result<Vec<f32>, ModelError> + Send>;

/// A model the engine can train one group at a time on a device `D`.
///
/// The model owns its activations; the engine owns parameter and gradient buffers and installs
/// them for the stages that read them. An op on a group that is not installed is a programmer
/// error (panic naming the group).
pub trait Model<D: Device> {
    /// Parameter groups in layout order; their ranges tile `0..num_params()`.
    fn groups(&self) -> &[GroupSpec];

    /// Elements of the flat parameter array.
    fn num_params(&self) -> usize;

    /// The forward and backward stages (fixed for the model's life).
    fn stages(&self) -> &Stages;

    /// Runs forward stage `stage` on micro-batch `tokens`, `targets` (B,T). The stage that
    /// computes the loss returns the mean loss; the others return `None`.
    fn forward(
        &mut self,
        dev: &D,
        stage: usize,
        tokens: &[u32],
        targets: &[u32],
    ) -> Result<Option<f32>, ModelError>;

    /// Runs backward stage `stage`, adding `grad_scale * d(mean loss)/d(params)` into the
    /// installed gradient buffers (`+=`).
    fn backward(
        &mut self,
        dev: &D,
        stage: usize,
        tokens: &[u32],
        targets: &[u32],
        grad_scale: f32,
    ) -> Result<(), ModelError>;

    /// The seeded initial parameters of a fresh run, produced one group range at a time in
    /// layout order (a model larger than RAM never exists whole in host memory).
    fn seeded_init(&self, seed: u64) -> ParamSource;

    /// The model's slots for installed parameter and gradient buffers.
    fn buffers_mut(&mut self) -> &mut GroupBuffers<D::Buffer>;

    /// Hands the model group `g`'s fp32 parameter buffer (filled by the caller).
    fn install_params(&mut self, g: usize, buf: D::Buffer) {
        self.buffers_mut().install_params(g, buf)
    }
    /// Takes group `g`'s parameter buffer back (`None` when not installed).
    fn take_params(&mut self, g: usize) -> Option<D::Buffer> {
        self.buffers_mut().params[g].take()
    }
    /// The installed parameter buffer of group `g`, to refill it in place.
    fn params_mut(&mut self, g: usize) -> Option<&mut D::Buffer> {
        self.buffers_mut().params[g].as_mut()
    }
    /// Hands the model group `g`'s fp32 gradient buffer (zeroed or holding the sums so far).
    fn install_grads(&mut self, g: usize, buf: D::Buffer) {
        self.buffers_mut().install_grads(g, buf)
    }
    /// Takes group `g`'s gradient buffer back.
    fn take_grads(&mut self, g: usize) -> Option<D::Buffer> {
        self.buffers_mut().grads[g].take()
    }
}

/// The installed buffer of group `i`; a missing one is a programmer error (an engine ran an op
/// before fetching the group it reads).
pub(crate) fn fetched<B>(v: &[Option<B>], i: usize) -> &B {
    v[i].as_ref()
        .unwrap_or_else(|| panic!("group {i} is not on the device (fetch it before the op)"))
}

pub(crate) fn fetched_mut<B>(v: &mut [Option<B>], i: usize) -> &mut B {
    v[i].as_mut()
        .unwrap_or_else(|| panic!("group {i} is not on the device (fetch it before the op)"))
}

/// The parameter and gradient buffers installed in a model, one slot per group (`None` while
/// an engine has the group released; an op reading a released group is a programmer error).
pub struct GroupBuffers<B> {
    /// Elements of each group.
    lens: Vec<usize>,
    pub(crate) params: Vec<Option<B>>,
    pub(crate) grads: Vec<Option<B>>,
}

impl<B: DeviceBuffer> GroupBuffers<B> {
    /// Empty slots for groups of `lens` elements.
    pub fn new(lens: Vec<usize>) -> Self {
        GroupBuffers {
            params: lens.iter().map(|_| None).collect(),
            grads: lens.iter().map(|_| None).collect(),
            lens,
        }
    }

    /// Installs group `g`'s parameters (panics on a wrong length or a second install).
    pub fn install_params(&mut self, g: usize, buf: B) {
        assert_eq!(buf.len(), self.lens[g], "group {g}: wrong buffer length");
        assert!(
            self.params[g].is_none(),
            "group {g}: parameters installed twice"
        );
        self.params[g] = Some(buf);
    }

    /// Installs group `g`'s gradients (panics on a wrong length or a second install).
    pub fn install_grads(&mut self, g: usize, buf: B) {
        assert_eq!(buf.len(), self.lens[g], "group {g}: wrong buffer length");
        assert!(
            self.grads[g].is_none(),
            "group {g}: gradients installed twice"
        );
        self.grads[g] = Some(buf);
    }
}

/// Targets that take part in the loss (not [`crate::device::IGNORE_INDEX`]), at least 1: the
/// mean loss of a micro-batch divides by it (transformers' `ForCausalLMLoss` with
/// `reduction="mean"` over labels that are not −100); a micro-batch whose targets are all
/// ignored has loss 0 and no gradient.
pub fn valid_targets(targets: &[u32]) -> usize {
    targets
        .iter()
        .filter(|&&t| t != crate::device::IGNORE_INDEX)
        .count()
        .max(1)
}
