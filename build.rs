//! Build script: the CUDA kernels in `kernels/*.cu`, twice (DESIGN §4, docs/gpu.md).
//!
//! 1. Always, for the emulator: each `.cu` (and each test-only `kernels/emu/tests/*.cu`) is
//!    compiled as C++ by g++ (the `cc` crate) against `kernels/emu/emu.h`, through a generated
//!    wrapper that registers its `extern "C" __global__` kernels; with the runtime
//!    (`kernels/emu/emu.cpp`) and a generated table of all kernels this is the static library
//!    `clipcu_emu` that `src/device/emu.rs` launches by name. The kernel objects' `__shared__`
//!    statics (sections `.bss._ZZ*`) are renamed into one section, `clipcu_emu_shared`, so the
//!    runtime can poison all of them before each block.
//! 2. When nvcc is found (`NVCC`, `$CUDA_HOME/bin`, `PATH`, then `.toolchain/cuda/bin` from
//!    `tools/install-nvcc.sh`): each `.cu` to PTX for `compute_80`, embedded through
//!    `$OUT_DIR/kernels_gen.rs` (see `src/kernels.rs`), and `cfg(clipcu_ptx)` set. `ptxas -v` then
//!    assembles every PTX for sm_80 and sm_90 and the registers, shared memory, stack and spills of
//!    every kernel go to `$OUT_DIR/ptxas-report.txt` (printed by `clipcu kernels`). A kernel
//!    marked `// clipcu: hot` on a line above it fails the build if it spills on either arch.
//!    Without nvcc: one warning, the emulator build only.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

/// A `.cu` file and its kernels.
struct CuFile {
    path: PathBuf,
    stem: String,
    /// Test-only (kernels/emu/tests): built for the emulator and checked by nvcc, never embedded.
    test: bool,
    /// (kernel name, marked hot)
    kernels: Vec<(String, bool)>,
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CLIPCU_NVCC_FLAGS",
        "OBJCOPY",
        "READELF",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo::rustc-check-cfg=cfg(clipcu_ptx)");

    let mut files = cu_files(&root.join("kernels"), false);
    files.extend(cu_files(&root.join("kernels/emu/tests"), true));
    let mut seen = std::collections::HashMap::new();
    for f in &files {
        for (k, _) in &f.kernels {
            if let Some(prev) = seen.insert(k.clone(), f.path.clone()) {
                fail(&format!(
                    "kernel {k} is defined in both {} and {}",
                    prev.display(),
                    f.path.display()
                ));
            }
        }
    }

    build_emulator(&root, &out, &files);

    let gen = match find_nvcc(&root) {
        Some(nvcc) => build_ptx(&nvcc, &root, &out, &files),
        None => {
            println!(
                "cargo:warning=nvcc not found (NVCC, CUDA_HOME, PATH, .toolchain/): kernels are \
                 built for the emulator only; run tools/install-nvcc.sh to also get PTX"
            );
            let report = "nvcc was not found when this build ran: no PTX, no ptxas report.\n\
                          Run tools/install-nvcc.sh (or set NVCC / CUDA_HOME) and rebuild.\n";
            fs::write(out.join("ptxas-report.txt"), report).unwrap();
            Generated {
                nvcc_version: None,
                modules: Vec::new(),
            }
        }
    };
    write_rust(&out, &gen);
}

fn fail(msg: &str) -> ! {
    panic!("\n\nbuild.rs: {msg}\n\n");
}

// ---- parsing: kernel names and hot markers ------------------------------------------------------

fn cu_files(dir: &Path, test: bool) -> Vec<CuFile> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let src = fs::read_to_string(&path)
                .unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
            let kernels =
                parse_kernels(&src).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            CuFile {
                path,
                stem,
                test,
                kernels,
            }
        })
        .collect()
}

/// The `extern "C" __global__` kernels of a source, in order, each with whether a
/// `// clipcu: hot` comment precedes it (after the previous kernel). Comments are skipped.
fn parse_kernels(src: &str) -> Result<Vec<(String, bool)>, String> {
    // Code with comments blanked out, and the offsets of hot markers.
    let mut code = String::with_capacity(src.len());
    let mut hot_at = Vec::new();
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") || b[i..].starts_with(b"/*") {
            let end = if b[i + 1] == b'/' {
                src[i..].find('\n').map_or(b.len(), |e| i + e)
            } else {
                src[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2)
            };
            if src[i..end].contains("clipcu: hot") {
                hot_at.push(code.len());
            }
            code.extend(
                src[i..end]
                    .chars()
                    .map(|c| if c == '\n' { '\n' } else { ' ' }),
            );
            i = end;
        } else if b[i] == b'"' {
            // A string literal (only `extern "C"` in practice): copied verbatim.
            let end = src[i + 1..].find('"').map_or(b.len(), |e| i + 1 + e + 1);
            code.push_str(&src[i..end]);
            i = end;
        } else {
            let c = src[i..].chars().next().unwrap();
            code.push(c);
            i += c.len_utf8();
        }
    }
    let mut kernels = Vec::new();
    let mut prev = 0;
    for (pos, _) in code.match_indices("__global__") {
        let before = code[..pos].trim_end();
        if !before.ends_with("extern \"C\"") {
            let line = code[..pos].matches('\n').count() + 1;
            return Err(format!(
                "line {line}: kernels must be declared `extern \"C\" __global__ void name(...)` \
                 (unmangled names are how the PTX loader and the emulator find them)"
            ));
        }
        let mut rest = code[pos + "__global__".len()..].trim_start();
        rest = rest
            .strip_prefix("void")
            .ok_or_else(|| "a __global__ function must return void".to_string())?
            .trim_start();
        if let Some(r) = rest.strip_prefix("__launch_bounds__") {
            let close = r.find(')').ok_or("unclosed __launch_bounds__")?;
            rest = r[close + 1..].trim_start();
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            return Err("could not read the name of a __global__ kernel".into());
        }
        let hot = hot_at.iter().any(|&h| h >= prev && h < pos);
        kernels.push((name, hot));
        prev = pos;
    }
    Ok(kernels)
}

// ---- the emulator library -----------------------------------------------------------------------

fn build_emulator(root: &Path, out: &Path, files: &[CuFile]) {
    let gen = out.join("emu");
    fs::create_dir_all(&gen).unwrap();
    let mut wrappers = Vec::new();
    let mut registry = String::from(
        "// @generated by build.rs: the table of every kernel the emulator can launch.\n\
         #include \"emu.h\"\n",
    );
    let mut table = String::new();
    for f in files {
        let mut w = format!(
            "// @generated by build.rs: {} for the emulator, its kernels registered.\n\
             #include \"emu.h\"\n#include \"{}\"\n",
            f.stem,
            f.path.display()
        );
        for (k, _) in &f.kernels {
            writeln!(w, "CLIPCU_EMU_KERNEL({k})").unwrap();
            writeln!(
                registry,
                "extern \"C\" const clipcu_emu::KernelInfo clipcu_emu_kernel_{k};"
            )
            .unwrap();
            writeln!(table, "    &clipcu_emu_kernel_{k},").unwrap();
        }
        let name = format!("{}{}.cpp", if f.test { "test_" } else { "" }, f.stem);
        write_if_changed(&gen.join(&name), &w);
        wrappers.push(gen.join(name));
    }
    write!(
        registry,
        "extern \"C\" const clipcu_emu::KernelInfo* const clipcu_emu_registry[] = {{\n{table}    nullptr,\n}};\n"
    )
    .unwrap();
    write_if_changed(&gen.join("registry.cpp"), &registry);
    // Wrappers of .cu files that no longer exist would be picked up by the ASan test's glob.
    for e in fs::read_dir(&gen).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "cpp")
            && !wrappers.contains(&p)
            && !p.ends_with("registry.cpp")
        {
            fs::remove_file(&p).unwrap();
        }
    }
    // For the sanitizer test (tests/emulator.rs), which rebuilds the same sources with ASan.
    println!("cargo:rustc-env=CLIPCU_EMU_GEN_DIR={}", gen.display());

    let base = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .std("c++17")
            // Always optimised: the emulator runs the test suite, also in debug builds.
            .opt_level(2)
            .debug(false)
            .include(root.join("kernels/emu"))
            .include(root.join("kernels/emu/include"))
            .include(root.join("kernels"))
            // Kernels type-pun freely (float4 loads, packed halves) as CUDA allows.
            .flag("-fno-strict-aliasing")
            .flag("-fdata-sections")
            .flag("-Wno-unknown-pragmas")
            .flag("-Wno-unused-parameter");
        b
    };
    let objects = base().files(&wrappers).compile_intermediates();
    let objects: Vec<PathBuf> = objects.iter().map(|o| gather_shared(o)).collect();
    base()
        .file(root.join("kernels/emu/emu.cpp"))
        .file(root.join("kernels/emu/emu_warp.cpp"))
        .file(gen.join("registry.cpp"))
        .objects(&objects)
        .compile("clipcu_emu");
}

/// Renames the `.bss._ZZ*` sections of a kernel object (function-local statics: the
/// `__shared__` variables) to `clipcu_emu_shared`, the section the runtime poisons per block.
fn gather_shared(obj: &Path) -> PathBuf {
    let readelf = env::var("READELF").unwrap_or_else(|_| "readelf".into());
    let objcopy = env::var("OBJCOPY").unwrap_or_else(|_| "objcopy".into());
    let listing = Command::new(&readelf)
        .args(["-SW"])
        .arg(obj)
        .output()
        .unwrap_or_else(|e| {
            fail(&format!(
                "{readelf} (binutils) is needed to build the emulator: {e}"
            ))
        });
    let text = String::from_utf8_lossy(&listing.stdout);
    let mut cmd = Command::new(&objcopy);
    let mut any = false;
    for sec in text
        .split_whitespace()
        .filter(|w| w.starts_with(".bss._ZZ"))
    {
        cmd.arg(format!("--rename-section={sec}=clipcu_emu_shared"));
        any = true;
    }
    let renamed = obj.with_extension("shared.o");
    if !any {
        fs::copy(obj, &renamed).unwrap();
        return renamed;
    }
    run(cmd.arg(obj).arg(&renamed), "objcopy");
    renamed
}

fn write_if_changed(path: &Path, text: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(text) {
        fs::write(path, text).unwrap();
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| fail(&format!("could not run {what} ({cmd:?}): {e}")));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        fail(&format!("{what} failed ({cmd:?}):\n{text}"));
    }
    text
}

// ---- nvcc: PTX, ptxas report --------------------------------------------------------------------

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    let runs = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Ok(p) = env::var("NVCC") {
        let p = PathBuf::from(p);
        if !runs(&p) {
            fail(&format!("NVCC={} does not run", p.display()));
        }
        return Some(p);
    }
    let mut candidates = Vec::new();
    if let Ok(home) = env::var("CUDA_HOME") {
        candidates.push(PathBuf::from(home).join("bin/nvcc"));
    }
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|d| d.join("nvcc")));
    }
    let local = root.join(".toolchain/cuda/bin/nvcc");
    if local.exists() {
        println!("cargo:rerun-if-changed={}", local.display());
    }
    candidates.push(local);
    candidates.into_iter().find(|p| p.is_file() && runs(p))
}

struct Generated {
    nvcc_version: Option<String>,
    /// (module name, PTX path, kernel names) of the production kernels.
    modules: Vec<(String, PathBuf, Vec<String>)>,
}

/// ptxas -v figures of one kernel on one arch.
#[derive(Default)]
struct Usage {
    regs: u32,
    smem: u32,
    stack: u32,
    spill_st: u32,
    spill_ld: u32,
}

const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

fn build_ptx(nvcc: &Path, root: &Path, out: &Path, files: &[CuFile]) -> Generated {
    let version = run(Command::new(nvcc).arg("--version"), "nvcc --version");
    let version = version
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or("nvcc")
        .trim()
        .to_string();
    let ptxas = nvcc.with_file_name("ptxas");
    let extra: Vec<String> = env::var("CLIPCU_NVCC_FLAGS")
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let dir = out.join("ptx");
    fs::create_dir_all(&dir).unwrap();
    let mut modules = Vec::new();
    let mut rows = Vec::new(); // (file, kernel, arch, usage, hot)
    for f in files {
        let ptx = dir.join(format!(
            "{}{}.ptx",
            if f.test { "test_" } else { "" },
            f.stem
        ));
        run(
            Command::new(nvcc)
                .args(["-ptx", "-arch=compute_80", "-std=c++17", "-O3"])
                .arg("-I")
                .arg(root.join("kernels"))
                .args(&extra)
                .arg(&f.path)
                .arg("-o")
                .arg(&ptx),
            &format!("nvcc on {}", f.path.display()),
        );
        for arch in ARCHS {
            let cubin = ptx.with_extension(format!("{arch}.cubin"));
            let log = run(
                Command::new(&ptxas)
                    .args(["-v", &format!("-arch={arch}")])
                    .arg(&ptx)
                    .arg("-o")
                    .arg(&cubin),
                &format!("ptxas -arch={arch} on {}", ptx.display()),
            );
            for (kernel, usage) in parse_ptxas(&log) {
                let hot = f.kernels.iter().any(|(k, h)| *k == kernel && *h);
                rows.push((
                    f.stem.clone() + if f.test { " (test)" } else { "" },
                    kernel,
                    arch,
                    usage,
                    hot,
                ));
            }
        }
        if !f.test {
            let names = f.kernels.iter().map(|(k, _)| k.clone()).collect();
            modules.push((f.stem.clone(), ptx, names));
        }
    }
    let mut report = format!(
        "ptxas -v resource report — {version}; PTX for compute_80 assembled for {}.\n\
         regs: registers per thread; smem: static shared bytes; stack: local-memory frame bytes;\n\
         spill st/ld: bytes spilled to local memory. hot: marked `// clipcu: hot` (must not spill).\n\n",
        ARCHS.join(" and ")
    );
    writeln!(
        report,
        "{:<24} {:<28} {:<6} {:>5} {:>7} {:>6} {:>9} {:>9}  hot",
        "file", "kernel", "arch", "regs", "smem", "stack", "spill st", "spill ld"
    )
    .unwrap();
    rows.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
    let mut spills = Vec::new();
    for (file, kernel, arch, u, hot) in &rows {
        writeln!(
            report,
            "{file:<24} {kernel:<28} {arch:<6} {:>5} {:>7} {:>6} {:>9} {:>9}  {}",
            u.regs,
            u.smem,
            u.stack,
            u.spill_st,
            u.spill_ld,
            if *hot { "yes" } else { "" }
        )
        .unwrap();
        if *hot && (u.spill_st > 0 || u.spill_ld > 0) {
            spills.push(format!(
                "{kernel} ({file}) spills on {arch}: {} bytes stored, {} loaded",
                u.spill_st, u.spill_ld
            ));
        }
    }
    let path = out.join("ptxas-report.txt");
    fs::write(&path, &report).unwrap();
    if !spills.is_empty() {
        fail(&format!(
            "hot kernels must not spill (DESIGN §4):\n  {}\nfull report: {}",
            spills.join("\n  "),
            path.display()
        ));
    }
    Generated {
        nvcc_version: Some(version),
        modules,
    }
}

/// Per kernel, from `ptxas -v` output: "Compiling entry function 'k' for 'sm_90'", then
/// "N bytes stack frame, N bytes spill stores, N bytes spill loads" and
/// "Used N registers, ..., N bytes smem, ...".
fn parse_ptxas(log: &str) -> Vec<(String, Usage)> {
    let mut out: Vec<(String, Usage)> = Vec::new();
    let num_before = |line: &str, unit: &str| -> Option<u32> {
        let i = line.find(unit)?;
        line[..i].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(i) = line.find("Compiling entry function '") {
            let rest = &line[i + "Compiling entry function '".len()..];
            out.push((
                rest[..rest.find('\'').unwrap_or(rest.len())].to_string(),
                Usage::default(),
            ));
        } else if let Some((_, u)) = out.last_mut() {
            if line.contains("bytes stack frame") {
                u.stack = num_before(line, "bytes stack frame").unwrap_or(0);
                u.spill_st = num_before(line, "bytes spill stores").unwrap_or(0);
                u.spill_ld = num_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used") && line.contains("registers") {
                u.regs = num_before(line, "registers").unwrap_or(0);
                u.smem = num_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

// ---- the Rust side: kernels_gen.rs ----------------------------------------------------------------

fn write_rust(out: &Path, gen: &Generated) {
    let mut s =
        String::from("// @generated by build.rs: the PTX of kernels/*.cu (see src/kernels.rs).\n");
    match &gen.nvcc_version {
        Some(v) => {
            println!("cargo:rustc-cfg=clipcu_ptx");
            writeln!(s, "pub const NVCC_VERSION: Option<&str> = Some({v:?});").unwrap();
        }
        None => writeln!(s, "pub const NVCC_VERSION: Option<&str> = None;").unwrap(),
    }
    s.push_str("pub static MODULES: &[PtxModule] = &[\n");
    for (name, ptx, kernels) in &gen.modules {
        writeln!(
            s,
            "    PtxModule {{ name: {name:?}, ptx: include_str!({:?}), kernels: &{kernels:?} }},",
            ptx.display().to_string()
        )
        .unwrap();
    }
    s.push_str("];\n");
    writeln!(
        s,
        "pub static PTXAS_REPORT: &str = include_str!({:?});",
        out.join("ptxas-report.txt").display().to_string()
    )
    .unwrap();
    write_if_changed(&out.join("kernels_gen.rs"), &s);
}
