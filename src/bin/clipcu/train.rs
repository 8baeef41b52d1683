//! `clipcu train`: train a CLIP from scratch (the embedded synthetic dataset when no --data is
//! given), evaluating zero-shot on the held-out split as it goes. Keep the flag names: scripts use
//! them.

use clipcu::model::ClipConfig;
use clipcu::train::{DataSpec, RunOptions, TrainConfig, Trainer};
use clipcu::Result;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct TrainArgs {
    /// Model config: a shipped name or a JSON file [default: synthetic-rn, a small
    /// ModifiedResNet CLIP sized for the synthetic main job (docs/perf.md: why a CNN)]. A resumed
    /// run keeps its checkpoint's model: a --config that differs from it is an error.
    #[arg(long)]
    pub config: Option<String>,
    /// Training data: a WebDataset shard or brace pattern, a CSV/TSV, or nothing for the
    /// embedded synthetic dataset.
    #[arg(long)]
    pub data: Option<String>,
    /// Pairs per step (the synthetic default: 64 — more steps for the same samples learn shape
    /// faster on two cores, docs/perf.md).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Micro-batch size for gradient accumulation (the loss still spans the whole batch).
    #[arg(long, default_value_t = 0)]
    pub micro_batch: usize,
    /// Optimisation steps (the schedule's length). See --epochs for finite data.
    #[arg(long, default_value_t = 5500)]
    pub steps: usize,
    /// The run's length in passes over --data instead of --steps: E × ⌊samples / batch⌋ steps
    /// (batches run on across an epoch's end; docs in `train::steps_for_epochs`).
    #[arg(long, conflicts_with = "steps")]
    pub epochs: Option<usize>,
    /// Data decoding threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Start from these weights (open_clip/OpenAI or Hugging Face names, f32/f16/bf16, or a
    /// clipcu model): a fine-tune, with a fresh optimizer and logit_scale as loaded. Give
    /// --config when the file carries no config of its own.
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// Lock the image tower (LiT): no gradients, no optimizer state, no backward through it.
    #[arg(long)]
    pub lock_image: bool,
    /// With --lock-image: the last N groups of the image tower stay trainable (open_clip's
    /// groups: for a ViT, 1 = the projection, 2 = also the last block and ln_post, ...).
    #[arg(long, default_value_t = 0)]
    pub lock_image_unlocked_groups: usize,
    /// With --lock-image: the locked ResNet groups' BatchNorms use their running statistics.
    #[arg(long)]
    pub lock_image_freeze_bn_stats: bool,
    /// Lock the text tower.
    #[arg(long)]
    pub lock_text: bool,
    /// With --lock-text: the last N groups of the text tower stay trainable (1 = the
    /// projection, 2 = also the last block and ln_final, ...).
    #[arg(long, default_value_t = 0)]
    pub lock_text_unlocked_layers: usize,
    /// Zero-shot evaluation on an ImageFolder (one sub-folder per class) every --eval-every
    /// steps and at the end.
    #[arg(long)]
    pub zeroshot_data: Option<String>,
    /// Prompt templates of --zeroshot-data: openai (80), simple (7) or a file (one `{}` template
    /// per line).
    #[arg(long, default_value = "openai")]
    pub zeroshot_templates: String,
    /// Display names of --zeroshot-data's classes: one per line in the sorted folder order, or
    /// `folder<TAB>name` lines (default: the folder names, `_` read as a space).
    #[arg(long)]
    pub zeroshot_classnames: Option<PathBuf>,
    /// Validation pairs (a CSV/TSV or WebDataset shards): loss and image↔text recall@1/5/10
    /// every --eval-every steps and at the end.
    #[arg(long)]
    pub val_data: Option<String>,
    /// Peak learning rate (the comparison on the synthetic default is in docs/perf.md).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.1)]
    pub wd: f64,
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// Constant learning rate after warmup (default: cosine to zero).
    #[arg(long)]
    pub constant_lr: bool,
    #[arg(long)]
    pub grad_clip: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder: checkpoint.safetensors, model.safetensors, metrics.jsonl, training.png.
    /// A fresh run into a folder that holds a run is refused (see --overwrite, --resume).
    #[arg(long, default_value = "runs/synthetic")]
    pub out: PathBuf,
    /// Let a fresh run replace the run that OUT holds (its checkpoints, model, metrics and plot
    /// are deleted when the new run starts).
    #[arg(long)]
    pub overwrite: bool,
    /// Step-numbered checkpoints (checkpoint-<step>.safetensors) kept besides the latest,
    /// checkpoint.safetensors, to resume from if a run goes wrong; hard links, no extra disk.
    #[arg(long, default_value_t = 3)]
    pub keep_checkpoints: usize,
    /// Continue from a checkpoint (default: OUT/checkpoint.safetensors).
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub resume: Option<String>,
    /// Device: auto, cpu, cuda, cuda:N, emu.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: usize,
    #[arg(long, default_value_t = 1000)]
    pub eval_every: usize,
    #[arg(long, default_value_t = 1000)]
    pub eval_samples: usize,
    /// Recompute transformer blocks in backward (less memory, more compute).
    #[arg(long)]
    pub checkpointing: bool,
    /// Synthetic data: build batches from groups of N pairs that share colour, size, count,
    /// position, background and texture and differ in shape — hard negatives that make the
    /// model see shape (0 or 1: plain random pairs).
    #[arg(long, default_value_t = 8)]
    pub shape_groups: usize,
    /// Train on --data with the evaluation transform (resize, exact center crop) instead of
    /// open_clip's training transform (RandomResizedCrop: scale 0.9–1, ratio 3/4–4/3, bicubic,
    /// a new crop per sample and epoch). The synthetic data is never augmented; a resumed run
    /// keeps its checkpoint's setting.
    #[arg(long)]
    pub no_augment: bool,
    /// Data-parallel ranks: N > 1 trains on N ranks. --device cuda: N processes of this
    /// program, one per GPU, on NCCL (as torchrun --nproc-per-node would start them); --device
    /// cpu or emu: N threads on the in-process communicator (for testing). --batch-size is the
    /// global batch, which N must divide; the run's numbers are those of one process on that
    /// batch (a ResNet's BatchNorm is synchronised over the ranks: SyncBatchNorm). Only rank 0
    /// writes; a resumed run may use another N. A process started by torchrun or SLURM (RANK/
    /// WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS set) runs as that rank on LOCAL_RANK's GPU.
    #[arg(long, default_value_t = 1)]
    pub nproc_per_node: usize,
    /// Seconds a rank waits for the others — at the rendezvous, in NCCL's init, in each
    /// collective — before failing with an error naming the rank and the collective (NCCL's
    /// communicator is then aborted).
    #[arg(long, default_value_t = 600)]
    pub dist_timeout: u64,
    /// Numerics, open_clip's names: fp32, tf32 (cuda: TF32 GEMMs), amp (f16 activations, f32
    /// master weights, dynamic loss scaling), amp_bf16, pure_fp16 / pure_bf16 (16-bit weights
    /// updated with stochastic rounding, f16 Adam moments: the CLIP paper's recipe). Default:
    /// fp32, or a resumed checkpoint's (another one converts it on load).
    #[arg(long)]
    pub precision: Option<clipcu::train::Precision>,
    /// ZeRO stage 1: shard the AdamW moments over the data-parallel ranks (the gradients are
    /// reduce-scattered to the parameters' owners, each updates its share, then the updated
    /// parameters are all-gathered). The same numbers as without it (the clip's norm within an
    /// f32 rounding); checkpoints hold the whole state. Every device and precision.
    #[arg(long)]
    pub zero1: bool,
}

/// The shipped config `clipcu train` uses when no --config is given.
const DEFAULT_CONFIG: &str = "synthetic-rn";

pub fn run(a: &TrainArgs) -> Result<()> {
    let data = match &a.data {
        None => DataSpec::Synthetic,
        Some(d) => DataSpec::Files(d.clone()),
    };
    let lock = clipcu::model::Locking {
        image: a.lock_image,
        image_unlocked_groups: a.lock_image_unlocked_groups,
        image_freeze_bn_stats: a.lock_image_freeze_bn_stats,
        text: a.lock_text,
        text_unlocked_layers: a.lock_text_unlocked_layers,
    };
    lock.validate()?;
    let steps = match a.epochs {
        Some(e) => clipcu::train::steps_for_epochs(&data, e, a.batch_size)?,
        None => a.steps,
    };
    let config = TrainConfig {
        batch_size: a.batch_size,
        micro_batch: a.micro_batch,
        steps,
        lr: a.lr,
        weight_decay: a.wd,
        warmup: a.warmup,
        constant_lr: a.constant_lr,
        grad_clip: a.grad_clip,
        seed: a.seed,
        checkpointing: a.checkpointing,
        shape_groups: a.shape_groups,
        lock,
        epochs: a.epochs,
        // open_clip's training transform for file data unless --no-augment.
        augment: a.data.is_some() && !a.no_augment,
        workers: a.workers,
        precision: a.precision,
    };
    if a.pretrained.is_some() && a.resume.is_some() {
        return Err(clipcu::Error::Msg(
            "--pretrained starts a fresh fine-tune, --resume continues a run (whose checkpoint \
             holds its weights): give one of them"
                .into(),
        ));
    }
    // The evaluation sets are opened (and refused) before anything is trained.
    let zeroshot = a
        .zeroshot_data
        .as_deref()
        .map(|z| {
            clipcu::train::eval::ZeroShotSet::open(
                z,
                &a.zeroshot_templates,
                a.zeroshot_classnames.as_deref(),
            )
        })
        .transpose()?;
    let validation = a
        .val_data
        .as_deref()
        .map(clipcu::train::eval::ValidationSet::open)
        .transpose()?;
    let opts = RunOptions {
        out: a.out.clone(),
        checkpoint_every: a.checkpoint_every,
        eval_every: a.eval_every,
        eval_samples: a.eval_samples,
        progress: std::io::stderr().is_terminal(),
        overwrite: a.overwrite,
        keep_checkpoints: a.keep_checkpoints,
        zeroshot,
        validation,
    };
    // Everything that can be refused is refused before a model is built.
    config.validate()?;
    opts.validate()?;
    if a.nproc_per_node == 0 {
        return Err(clipcu::Error::Msg(
            "--nproc-per-node 0: give at least 1 rank".into(),
        ));
    }
    let launch = launch(a)?;
    let world = match &launch {
        Launch::Threads(n) | Launch::Spawn(n) => *n,
        Launch::Rank(info) => info.world_size,
    };
    clipcu::train::data_parallel::local_batch(a.batch_size, world)?;
    let outputs = [
        "checkpoint.safetensors",
        "model.safetensors",
        "metrics.jsonl",
        "training.png",
    ]
    .map(|f| a.out.join(f));
    let mut inputs: Vec<(&str, PathBuf)> = Vec::new();
    if let Some(c) = &a.config {
        inputs.push(("--config", PathBuf::from(c)));
    }
    if let Some(d) = &a.data {
        inputs.push(("--data", PathBuf::from(d)));
    }
    if let Some(p) = &a.pretrained {
        inputs.push(("--pretrained", p.clone()));
    }
    if let Some(v) = &a.val_data {
        inputs.push(("--val-data", PathBuf::from(v)));
    }
    for out in &outputs {
        crate::refuse_output_over_inputs("--out", out, &inputs)?;
    }
    if a.resume.is_none() && !a.overwrite {
        let found = clipcu::train::existing_run(&a.out);
        if !found.is_empty() {
            return Err(clipcu::Error::Msg(format!(
                "{} already holds a run ({}): a fresh run would overwrite it; give --resume to \
                 continue it, --overwrite to replace it, or another --out",
                a.out.display(),
                found.join(", ")
            )));
        }
    }
    // A checkpoint from elsewhere resumed into a folder that holds another run would continue
    // that run's metrics with this one's steps.
    if let Some(p) = a.resume.as_deref().filter(|p| !p.is_empty()) {
        let dir = match std::path::Path::new(p).parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let found = clipcu::train::existing_run(&a.out);
        if !found.is_empty() && !clipcu::io::same_file(&dir, &a.out) {
            return Err(clipcu::Error::Msg(format!(
                "--resume {p} is a checkpoint from another folder than --out {}, which holds a \
                 run of its own ({}): resuming into it would mix the two runs; give another --out",
                a.out.display(),
                found.join(", ")
            )));
        }
    }
    let timeout = Duration::from_secs(a.dist_timeout);
    if let Launch::Spawn(n) = launch {
        return spawn_ranks(n, timeout);
    }
    // A rank of a multi-process job: NCCL (probed; rank 0's id over the rendezvous) before
    // anything is built, so that a job that cannot communicate fails at once on every rank.
    let nccl = match &launch {
        Launch::Rank(info) => {
            eprintln!(
                "rank {} of {} ({}): cuda:{}, rendezvous at {}:{}",
                info.rank,
                info.world_size,
                info.launcher,
                info.local_rank,
                info.master_addr,
                info.master_port
            );
            Some(clipcu::dist::nccl::Nccl::connect(info, timeout)?)
        }
        _ => None,
    };
    let device = match &nccl {
        Some(c) => c.device(),
        None => crate::pick_device(&a.device)?,
    };
    // Every rank builds its own replica the same way (`lead`: rank 0, which says what it does).
    let make = |lead: bool| -> Result<(Trainer, String)> {
        Ok(match &a.resume {
            Some(p) => {
                let path = if p.is_empty() {
                    a.out.join("checkpoint.safetensors")
                } else {
                    PathBuf::from(p)
                };
                let t = Trainer::resume(&path, config.clone(), data.clone())?;
                if lead && a.no_augment && t.config.augment {
                    eprintln!(
                    "note: --no-augment is ignored: {} was trained with the training transform, \
                     and a resumed run keeps its checkpoint's",
                    path.display()
                );
                }
                // The checkpoint decides the model; a --config naming another one would be ignored.
                if let Some(c) = &a.config {
                    let given = ClipConfig::load(c)?;
                    if given != t.model.config {
                        return Err(clipcu::Error::Msg(format!(
                        "--config {c} is not the model of the checkpoint {} (a resumed run keeps \
                         its checkpoint's model): leave --config out, or start a fresh run",
                        path.display()
                    )));
                    }
                }
                if lead {
                    eprintln!("resumed {} at step {}", path.display(), t.step);
                }
                (t, format!("the model of {}", path.display()))
            }
            None => match &a.pretrained {
                Some(p) => {
                    let given = a.config.as_deref().map(ClipConfig::load).transpose()?;
                    if let (Some(c), Some(stored)) = (&given, clipcu::model::weights::config_in(p)?)
                    {
                        if *c != stored {
                            return Err(clipcu::Error::Msg(format!(
                            "--config {} is not the model of --pretrained {}, which carries its \
                             own config: leave --config out",
                            a.config.as_deref().unwrap_or_default(),
                            p.display()
                        )));
                        }
                    }
                    let model = clipcu::model::load_clip(p, given.as_ref())?;
                    let what = format!(
                        "{} (fine-tuned from {})",
                        a.config.as_deref().unwrap_or("the model"),
                        p.display()
                    );
                    model.config.check_tokenizer_vocab(&what)?;
                    (
                        Trainer::fine_tune(model, config.clone(), data.clone())?,
                        what,
                    )
                }
                None => {
                    let name = a.config.as_deref().unwrap_or(DEFAULT_CONFIG);
                    let cfg = ClipConfig::load(name)?;
                    cfg.check_tokenizer_vocab(name)?;
                    (
                        Trainer::new(&cfg, config.clone(), data.clone())?,
                        name.to_string(),
                    )
                }
            },
        })
    };
    // One rank of a group (threads or processes): its replica, then the group's run.
    let rank_run = |comm: Box<dyn clipcu::dist::Communicator>| {
        let lead = comm.rank() == 0;
        let made = make(lead).and_then(|(mut t, name)| {
            t.to_device(device)?;
            Ok((t, name))
        });
        // a rank that could not start stops the others now, not at the step's timeout
        let all = clipcu::train::data_parallel::all_ok(comm.as_ref(), made.is_ok());
        let (mut trainer, model_name) = made?;
        all?;
        trainer.set_communicator(comm)?;
        if a.zero1 {
            trainer.set_zero1()?;
        }
        if lead {
            header(a, &trainer, &model_name, device);
        }
        let start_step = trainer.step;
        let start = Instant::now();
        let last = trainer.run(&opts)?;
        let secs = start.elapsed().as_secs_f64();
        Ok(lead.then(|| (last, start_step, trainer.step, secs, trainer.data.skips())))
    };
    let lead_result = match (launch, nccl) {
        (Launch::Rank(_), Some(comm)) => rank_run(Box::new(comm))?,
        (Launch::Threads(n), _) if n > 1 => {
            let ranks = clipcu::train::data_parallel::run_ranks(n, timeout, |comm| {
                rank_run(Box::new(comm))
            })?;
            ranks.into_iter().next().flatten()
        }
        _ => {
            let (mut trainer, model_name) = make(true)?;
            trainer.to_device(device)?;
            if a.zero1 {
                trainer.set_zero1()?; // the error: it needs ranks
            }
            header(a, &trainer, &model_name, device);
            let start_step = trainer.step;
            let start = Instant::now();
            let last = trainer.run(&opts)?;
            let secs = start.elapsed().as_secs_f64();
            return report(
                a,
                &last,
                start_step,
                trainer.step,
                secs,
                trainer.data.skips(),
            );
        }
    };
    match lead_result {
        Some((last, start_step, end_step, secs, skips)) => {
            report(a, &last, start_step, end_step, secs, skips)
        }
        // ranks other than 0 report nothing: rank 0 speaks for the group
        None => Ok(()),
    }
}

/// How this `clipcu train` process runs.
enum Launch {
    /// One process (N = 1) or N ranks as threads on the in-process communicator (cpu, emu).
    Threads(usize),
    /// The launcher of N rank processes of this program, one per GPU.
    Spawn(usize),
    /// One rank of a multi-process job (torchrun, SLURM, or [`Launch::Spawn`]), on NCCL.
    Rank(clipcu::dist::RankInfo),
}

/// Whether `--device` names a GPU (`cuda`, `cuda:N`), or `auto` would pick one.
fn wants_cuda(device: &str) -> bool {
    match device {
        "auto" => matches!(clipcu::Device::auto().0, clipcu::Device::Cuda(_)),
        d => d.starts_with("cuda"),
    }
}

fn launch(a: &TrainArgs) -> Result<Launch> {
    let env = clipcu::dist::RankInfo::from_process_env()?;
    let cuda = wants_cuda(&a.device);
    Ok(match env {
        // a launcher's rank; a world of 1 too when torchrun's variables say so (the same NCCL
        // path, e.g. the GPU check), but not every single-task SLURM job
        Some(info) if cuda && (info.world_size > 1 || info.launcher == "torchrun") => {
            Launch::Rank(info)
        }
        Some(info) if info.world_size > 1 => {
            return Err(clipcu::Error::Msg(format!(
                "this process is rank {} of {} ({}'s variables are set), but --device {} has no \
                 NCCL: multi-process ranks run on --device cuda; on cpu or emu, run one process \
                 with --nproc-per-node {} (ranks as threads)",
                info.rank, info.world_size, info.launcher, a.device, info.world_size
            )))
        }
        _ if a.nproc_per_node > 1 && cuda => Launch::Spawn(a.nproc_per_node),
        _ => Launch::Threads(a.nproc_per_node),
    })
}

/// `--nproc-per-node N --device cuda`: N processes of this program with the same arguments,
/// as torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1, MASTER_PORT:
/// the environment's or a free port). Their stderr comes through prefixed with the rank. When
/// a rank fails, the others get `timeout` (at most 30 s) to fail on their own — their errors
/// say what they saw — and are then stopped; the error is the first failing rank's.
fn spawn_ranks(n: usize, timeout: Duration) -> Result<()> {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let port = match std::env::var("MASTER_PORT") {
        Ok(p) => p,
        Err(_) => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port().to_string())
            .map_err(|e| clipcu::Error::Msg(format!("no free port for the rendezvous: {e}")))?,
    };
    let exe = std::env::current_exe()
        .map_err(|e| clipcu::Error::Msg(format!("cannot find this program to spawn ranks: {e}")))?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    eprintln!("starting {n} ranks (processes, NCCL), rendezvous at 127.0.0.1:{port}");
    let mut children = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    let last_error: Vec<std::sync::Arc<std::sync::Mutex<Option<String>>>> =
        (0..n).map(|_| Default::default()).collect();
    for (r, slot) in last_error.iter().enumerate() {
        let child = Command::new(&exe)
            .args(&args)
            .env("RANK", r.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_RANK", r.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                for c in children.iter_mut() {
                    let _ = std::process::Child::kill(c);
                    let _ = std::process::Child::wait(c);
                }
                return Err(clipcu::Error::Msg(format!("cannot start rank {r}: {e}")));
            }
        };
        let stderr = child.stderr.take().expect("piped");
        let slot = slot.clone();
        readers.push(std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(e) = line.strip_prefix("error: ") {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                }
                eprintln!("[rank {r}] {line}");
            }
        }));
        children.push(child);
    }
    let mut status: Vec<Option<std::process::ExitStatus>> = vec![None; n];
    let mut first_failure: Option<(usize, Instant)> = None;
    let grace = timeout.min(Duration::from_secs(30));
    while status.iter().any(Option::is_none) {
        for (r, c) in children.iter_mut().enumerate() {
            if status[r].is_none() {
                if let Ok(Some(s)) = c.try_wait() {
                    status[r] = Some(s);
                    if !s.success() && first_failure.is_none() {
                        first_failure = Some((r, Instant::now()));
                    }
                }
            }
        }
        if let Some((_, at)) = first_failure {
            if at.elapsed() > grace {
                for (r, c) in children.iter_mut().enumerate() {
                    if status[r].is_none() {
                        let _ = c.kill();
                        status[r] = c.wait().ok();
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for h in readers {
        let _ = h.join();
    }
    match first_failure {
        None => Ok(()),
        Some((r, _)) => {
            let why = last_error[r]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "no error message (see its output above)".into());
            Err(clipcu::Error::Msg(format!(
                "rank {r} of {n} failed ({}): {why}",
                status[r].map_or("killed".into(), |s| s.to_string())
            )))
        }
    }
}

/// What a run is about to train, said once (by rank 0).
fn header(a: &TrainArgs, trainer: &Trainer, model_name: &str, device: clipcu::Device) {
    let m = &trainer.model.config;
    let ranks = match trainer.world_size() {
        1 => String::new(),
        n if matches!(device, clipcu::Device::Cuda(_)) => format!(" × {n} ranks (NCCL)"),
        n => format!(" × {n} ranks (threads, in-process communicator)"),
    };
    eprintln!(
        "training {} ({}×{} px, {} trainable params) on {}{} ({device}{ranks}): {} steps × {} pairs{} → {}",
        model_name,
        m.vision_cfg.image_size,
        m.vision_cfg.image_size,
        clipcu::nn::Module::num_trainable(&trainer.model),
        a.data.as_deref().unwrap_or("synthetic shapes"),
        match (a.data.is_some(), trainer.config.augment) {
            (false, _) => "",
            (true, true) => " with open_clip's RandomResizedCrop",
            (true, false) => " center-cropped (no augmentation)",
        },
        trainer.config.steps,
        a.batch_size,
        a.epochs
            .map(|e| format!(" ({e} epochs)"))
            .unwrap_or_default(),
        a.out.display()
    );
}

/// The run's summary on stdout.
fn report(
    a: &TrainArgs,
    last: &clipcu::train::RunSummary,
    start_step: usize,
    end_step: usize,
    secs: f64,
    skips: Option<clipcu::data::SkipStats>,
) -> Result<()> {
    let done = end_step - start_step;
    println!(
        "trained {} steps in {:.0} s ({:.0} pairs/s){}",
        done,
        secs,
        (done * a.batch_size) as f64 / secs,
        if start_step > 0 {
            format!(", steps {}–{} of the run", start_step + 1, end_step)
        } else {
            String::new()
        }
    );
    if let Some((single, ens)) = last.heldout_shape {
        println!(
            "zero-shot top-1 on held-out colour–shape combinations (shape task, {} samples):",
            a.eval_samples
        );
        println!("  single template  {:>5.1}%", 100.0 * single);
        println!("  ensembled        {:>5.1}%", 100.0 * ens);
    }
    if let (Some(r), Some(z)) = (&last.zeroshot, &a.zeroshot_data) {
        println!(
            "zero-shot on {z} ({} images, {} templates):",
            r.samples, a.zeroshot_templates
        );
        println!(
            "  top-1 {:>5.1}%   top-5 {:>5.1}%",
            100.0 * r.top1,
            100.0 * r.top5
        );
    }
    if let (Some(r), Some(v)) = (&last.validation, &a.val_data) {
        println!(
            "validation on {v} ({} pairs): loss {:.4}",
            r.samples, r.loss
        );
        for (i, k) in [1, 5, 10].iter().enumerate() {
            println!(
                "  recall@{k:<2}  image→text {:>5.1}%   text→image {:>5.1}%",
                100.0 * r.image_to_text[i],
                100.0 * r.text_to_image[i]
            );
        }
    }
    if let Some(skips) = skips {
        println!(
            "data: skipped and counted {} corrupt and {} missing images, {} missing and {} empty captions, {} truncated and {} unreadable shards",
            skips.corrupt_image, skips.missing_image, skips.missing_caption, skips.empty_caption, skips.truncated_shard, skips.unreadable_shard
        );
    }
    println!("wrote {0}/model.safetensors, {0}/checkpoint.safetensors, {0}/metrics.jsonl, {0}/training.png", a.out.display());
    Ok(())
}
