//! Buildpacks as Heroku defines them: a folder with `bin/detect`, `bin/compile` and
//! `bin/release`. Skiff's own buildpacks ship inside the binary and are written to the data
//! dir on start, so a user's own buildpack and Skiff's are run the same way.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use crate::pipeline::{BuildError, BuildLog};

/// A buildpack on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buildpack {
    /// Short name (`rust`), used by `BUILDPACK` and `.buildpacks`.
    pub name: String,
    /// Folder holding `bin/detect`, `bin/compile`, `bin/release`.
    pub dir: PathBuf,
}

/// One file of a built-in buildpack: (buildpack, file name under `bin/`, contents).
type BuiltinFile = (&'static str, &'static str, &'static str);

/// The buildpacks compiled into Skiff, in detection order.
const BUILTIN_FILES: &[BuiltinFile] = &[
    (
        "rust",
        "detect",
        include_str!("../../buildpacks/rust/bin/detect"),
    ),
    (
        "rust",
        "compile",
        include_str!("../../buildpacks/rust/bin/compile"),
    ),
    (
        "rust",
        "release",
        include_str!("../../buildpacks/rust/bin/release"),
    ),
    (
        "rust",
        "package-name",
        include_str!("../../buildpacks/rust/bin/package-name"),
    ),
    // Clojure comes before Node.js: a shadow-cljs project has a package.json too. It builds
    // through the Node.js buildpack's componentize-js step.
    (
        "clojure",
        "detect",
        include_str!("../../buildpacks/clojure/bin/detect"),
    ),
    (
        "clojure",
        "compile",
        include_str!("../../buildpacks/clojure/bin/compile"),
    ),
    (
        "clojure",
        "release",
        include_str!("../../buildpacks/clojure/bin/release"),
    ),
    // Scala after Clojure and before Java: a Maven project that builds Scala has a pom.xml
    // too. It builds through the Node.js buildpack's componentize-js step.
    (
        "scala",
        "detect",
        include_str!("../../buildpacks/scala/bin/detect"),
    ),
    (
        "scala",
        "compile",
        include_str!("../../buildpacks/scala/bin/compile"),
    ),
    (
        "scala",
        "release",
        include_str!("../../buildpacks/scala/bin/release"),
    ),
    // Java after Clojure: Leiningen writes a pom.xml next to project.clj.
    (
        "java",
        "detect",
        include_str!("../../buildpacks/java/bin/detect"),
    ),
    (
        "java",
        "compile",
        include_str!("../../buildpacks/java/bin/compile"),
    ),
    (
        "java",
        "release",
        include_str!("../../buildpacks/java/bin/release"),
    ),
    (
        "nodejs",
        "detect",
        include_str!("../../buildpacks/nodejs/bin/detect"),
    ),
    (
        "nodejs",
        "compile",
        include_str!("../../buildpacks/nodejs/bin/compile"),
    ),
    (
        "nodejs",
        "release",
        include_str!("../../buildpacks/nodejs/bin/release"),
    ),
    (
        "nodejs",
        "procfile-web",
        include_str!("../../buildpacks/nodejs/bin/procfile-web"),
    ),
    (
        "nodejs",
        "entry.mjs",
        include_str!("../../buildpacks/nodejs/bin/entry.mjs"),
    ),
    (
        "nodejs",
        "prelude.mjs",
        include_str!("../../buildpacks/nodejs/bin/prelude.mjs"),
    ),
    (
        "python",
        "detect",
        include_str!("../../buildpacks/python/bin/detect"),
    ),
    (
        "python",
        "compile",
        include_str!("../../buildpacks/python/bin/compile"),
    ),
    (
        "python",
        "release",
        include_str!("../../buildpacks/python/bin/release"),
    ),
    (
        "python",
        "procfile-web",
        include_str!("../../buildpacks/python/bin/procfile-web"),
    ),
    // Ruby, PHP, Go and C build CGI programs (served by the runtime's CGI executor).
    (
        "ruby",
        "detect",
        include_str!("../../buildpacks/ruby/bin/detect"),
    ),
    (
        "ruby",
        "compile",
        include_str!("../../buildpacks/ruby/bin/compile"),
    ),
    (
        "ruby",
        "release",
        include_str!("../../buildpacks/ruby/bin/release"),
    ),
    (
        "php",
        "detect",
        include_str!("../../buildpacks/php/bin/detect"),
    ),
    (
        "php",
        "compile",
        include_str!("../../buildpacks/php/bin/compile"),
    ),
    (
        "php",
        "release",
        include_str!("../../buildpacks/php/bin/release"),
    ),
    (
        "go",
        "detect",
        include_str!("../../buildpacks/go/bin/detect"),
    ),
    (
        "go",
        "compile",
        include_str!("../../buildpacks/go/bin/compile"),
    ),
    (
        "go",
        "release",
        include_str!("../../buildpacks/go/bin/release"),
    ),
    (
        "go",
        "app-name",
        include_str!("../../buildpacks/go/bin/app-name"),
    ),
    ("c", "detect", include_str!("../../buildpacks/c/bin/detect")),
    (
        "c",
        "compile",
        include_str!("../../buildpacks/c/bin/compile"),
    ),
    (
        "c",
        "release",
        include_str!("../../buildpacks/c/bin/release"),
    ),
    // Static sites stay last: an index.html also turns up in apps of other languages.
    (
        "static",
        "detect",
        include_str!("../../buildpacks/static/bin/detect"),
    ),
    (
        "static",
        "compile",
        include_str!("../../buildpacks/static/bin/compile"),
    ),
    (
        "static",
        "release",
        include_str!("../../buildpacks/static/bin/release"),
    ),
];

/// Files of built-in buildpacks outside `bin/` (WIT worlds, modules shipped into apps):
/// (buildpack, path under its folder, contents).
const BUILTIN_SUPPORT_FILES: &[BuiltinFile] = &[
    (
        "nodejs",
        "wit/world.wit",
        include_str!("../../buildpacks/nodejs/wit/world.wit"),
    ),
    (
        "clojure",
        "lib/build.clj",
        include_str!("../../buildpacks/clojure/lib/build.clj"),
    ),
    (
        "clojure",
        "lib/skiff/ring.cljs",
        include_str!("../../buildpacks/clojure/lib/skiff/ring.cljs"),
    ),
    // Skiff's Scala API (package skiff), compiled with each app, and the Scala.js linker's driver.
    (
        "scala",
        "lib/skiff/Http.scala",
        include_str!("../../buildpacks/scala/lib/skiff/Http.scala"),
    ),
    (
        "scala",
        "lib/linker/dev/skiff/scalajs/Link.java",
        include_str!("../../buildpacks/scala/lib/linker/dev/skiff/scalajs/Link.java"),
    ),
    // Skiff's Java API (dev.skiff.http) and the CGI bridge TeaVM compiles with the app.
    (
        "java",
        "lib/api/dev/skiff/http/Handler.java",
        include_str!("../../buildpacks/java/lib/api/dev/skiff/http/Handler.java"),
    ),
    (
        "java",
        "lib/api/dev/skiff/http/Request.java",
        include_str!("../../buildpacks/java/lib/api/dev/skiff/http/Request.java"),
    ),
    (
        "java",
        "lib/api/dev/skiff/http/Response.java",
        include_str!("../../buildpacks/java/lib/api/dev/skiff/http/Response.java"),
    ),
    (
        "java",
        "lib/api/dev/skiff/http/Env.java",
        include_str!("../../buildpacks/java/lib/api/dev/skiff/http/Env.java"),
    ),
    (
        "java",
        "lib/bridge/dev/skiff/cgi/Cgi.java",
        include_str!("../../buildpacks/java/lib/bridge/dev/skiff/cgi/Cgi.java"),
    ),
    (
        "java",
        "lib/bridge/dev/skiff/cgi/Environ.java",
        include_str!("../../buildpacks/java/lib/bridge/dev/skiff/cgi/Environ.java"),
    ),
    (
        "python",
        "wit/world.wit",
        include_str!("../../buildpacks/python/wit/world.wit"),
    ),
    (
        "python",
        "lib/skiff_wsgi.py",
        include_str!("../../buildpacks/python/lib/skiff_wsgi.py"),
    ),
    (
        "static",
        "lib/file-server.rs",
        include_str!("../../buildpacks/static/lib/file-server.rs"),
    ),
    (
        "python",
        "lib/skiff.py",
        include_str!("../../buildpacks/python/lib/skiff.py"),
    ),
    (
        "python",
        "wit/skiff-addons/skiff.wit",
        include_str!("../../wit/skiff.wit"),
    ),
    (
        "nodejs",
        "lib/skiff.mjs",
        include_str!("../../buildpacks/nodejs/lib/skiff.mjs"),
    ),
    (
        "nodejs",
        "wit/skiff-addons/skiff.wit",
        include_str!("../../wit/skiff.wit"),
    ),
    (
        "ruby",
        "lib/skiff_rack.rb",
        include_str!("../../buildpacks/ruby/lib/skiff_rack.rb"),
    ),
    (
        "ruby",
        "lib/start.wat",
        include_str!("../../buildpacks/ruby/lib/start.wat"),
    ),
    (
        "ruby",
        "lib/js-host-stubs.wat",
        include_str!("../../buildpacks/ruby/lib/js-host-stubs.wat"),
    ),
    (
        "ruby",
        "lib/canonical-abi-stubs.wat",
        include_str!("../../buildpacks/ruby/lib/canonical-abi-stubs.wat"),
    ),
    // The recipe that builds php-cgi for WASI (run once per machine by bin/compile).
    (
        "php",
        "wasi/build-php.sh",
        include_str!("../../buildpacks/php/wasi/build-php.sh"),
    ),
    (
        "php",
        "wasi/skiff_wasi.c",
        include_str!("../../buildpacks/php/wasi/skiff_wasi.c"),
    ),
    (
        "php",
        "wasi/include/setjmp.h",
        include_str!("../../buildpacks/php/wasi/include/setjmp.h"),
    ),
    (
        "php",
        "wasi/include/ucontext.h",
        include_str!("../../buildpacks/php/wasi/include/ucontext.h"),
    ),
    (
        "php",
        "wasi/include/netdb.h",
        include_str!("../../buildpacks/php/wasi/include/netdb.h"),
    ),
    (
        "php",
        "wasi/include/sys/un.h",
        include_str!("../../buildpacks/php/wasi/include/sys/un.h"),
    ),
    (
        "php",
        "wasi/include/skiff_wasi_compat.h",
        include_str!("../../buildpacks/php/wasi/include/skiff_wasi_compat.h"),
    ),
    (
        "php",
        "wasi/patches/zend-fibers.patch",
        include_str!("../../buildpacks/php/wasi/patches/zend-fibers.patch"),
    ),
    (
        "php",
        "wasi/patches/unix-sockets.patch",
        include_str!("../../buildpacks/php/wasi/patches/unix-sockets.patch"),
    ),
    (
        "php",
        "wasi/patches/filestat.patch",
        include_str!("../../buildpacks/php/wasi/patches/filestat.patch"),
    ),
    (
        "php",
        "wasi/patches/cgi-main.patch",
        include_str!("../../buildpacks/php/wasi/patches/cgi-main.patch"),
    ),
    // Skiff's guest SDK (`skiff-sdk`): the Rust buildpack points apps' builds at it.
    (
        "rust",
        "sdk/skiff-sdk/Cargo.toml",
        include_str!("../../sdk/rust/Cargo.toml"),
    ),
    (
        "rust",
        "sdk/skiff-sdk/src/lib.rs",
        include_str!("../../sdk/rust/src/lib.rs"),
    ),
    (
        "rust",
        "sdk/skiff-sdk/src/bindings.rs",
        include_str!("../../sdk/rust/src/bindings.rs"),
    ),
    (
        "rust",
        "sdk/skiff-sdk/wit/skiff.wit",
        include_str!("../../wit/skiff.wit"),
    ),
];

/// What each built-in buildpack's `bin/detect` looks for (for `skiff buildpacks` and the
/// "nothing detected" message).
pub fn detects(name: &str) -> Option<&'static str> {
    match name {
        "rust" => Some("Cargo.toml"),
        "clojure" => Some("deps.edn, project.clj or shadow-cljs.edn"),
        "scala" => Some("build.sbt, or pom.xml with Scala"),
        "java" => Some("pom.xml"),
        "nodejs" => Some("package.json"),
        "python" => Some("requirements.txt, pyproject.toml or app.py"),
        "ruby" => Some("config.ru or Gemfile"),
        "php" => Some("index.php or composer.json"),
        "go" => Some("go.mod"),
        "c" => Some("Makefile and *.c"),
        "static" => Some("static.json or index.html"),
        _ => None,
    }
}

/// Names of the built-in buildpacks in detection order.
pub fn builtin_buildpacks() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for (name, _, _) in BUILTIN_FILES {
        if !names.contains(name) {
            names.push(name);
        }
    }
    names
}

/// Writes the built-in buildpacks under `dir` (replacing older copies) and returns them in
/// detection order.
pub fn install_builtin_buildpacks(dir: &Path) -> std::io::Result<Vec<Buildpack>> {
    use std::os::unix::fs::PermissionsExt;
    for (name, file, contents) in BUILTIN_FILES {
        let bin = dir.join(name).join("bin");
        std::fs::create_dir_all(&bin)?;
        let path = bin.join(file);
        std::fs::write(&path, contents)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    for (name, file, contents) in BUILTIN_SUPPORT_FILES {
        let path = dir.join(name).join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Unchanged files keep their times, so cargo does not rebuild the SDK every start.
        if std::fs::read_to_string(&path).ok().as_deref() != Some(*contents) {
            std::fs::write(&path, contents)?;
        }
    }
    Ok(builtin_buildpacks()
        .into_iter()
        .map(|name| Buildpack {
            name: name.to_owned(),
            dir: dir.join(name),
        })
        .collect())
}

impl Buildpack {
    /// Opens a user-supplied buildpack folder, checking it has the three scripts.
    pub fn from_dir(dir: &Path) -> Result<Self, BuildError> {
        for script in ["detect", "compile", "release"] {
            if !dir.join("bin").join(script).is_file() {
                return Err(BuildError::BadBuildpack(format!(
                    "{} has no bin/{script}",
                    dir.display()
                )));
            }
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        Ok(Self {
            name,
            dir: dir.to_owned(),
        })
    }

    fn script(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }
}

/// How a buildpack script is run: a clean environment and a time limit.
#[derive(Debug, Clone)]
pub(crate) struct ScriptEnv {
    /// The only variables the script sees (PATH, HOME, toolchain homes).
    pub vars: Vec<(String, String)>,
    /// Wall-clock limit for the script.
    pub limit: Duration,
}

/// The result of a script run.
pub(crate) struct ScriptOutput {
    pub success: bool,
    pub stdout: String,
}

/// Runs `bin/<script> args...`. With `log`, stdout and stderr stream there line by line;
/// without it, stdout is captured (detect, release) and stderr is still logged.
pub(crate) async fn run_script(
    bp: &Buildpack,
    script: &str,
    args: &[&Path],
    env: &ScriptEnv,
    log: &BuildLog,
    stream_stdout: bool,
) -> Result<ScriptOutput, BuildError> {
    let mut cmd = Command::new(bp.script(script));
    cmd.args(args)
        .env_clear()
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so a timeout can stop the whole tree (cargo, rustc, ...).
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| BuildError::Script {
        buildpack: bp.name.clone(),
        script: script.to_owned(),
        message: e.to_string(),
    })?;
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_task = stdout.map(|s| tokio::spawn(pump(s, log.clone(), stream_stdout)));
    let err_task = stderr.map(|s| tokio::spawn(pump(s, log.clone(), true)));

    let status = match tokio::time::timeout(env.limit, child.wait()).await {
        Ok(status) => status.map_err(|e| BuildError::Script {
            buildpack: bp.name.clone(),
            script: script.to_owned(),
            message: e.to_string(),
        })?,
        Err(_) => {
            if let Some(pid) = pid {
                kill_group(pid);
            }
            let _ = child.kill().await;
            return Err(BuildError::TimedOut {
                buildpack: bp.name.clone(),
                script: script.to_owned(),
                limit: env.limit,
            });
        }
    };
    // Whatever the script left running in its group (a compiler whose `make` was killed, a
    // background job) would hold its output open and stall the build until the time limit,
    // and outlive it: builds leave no processes behind.
    if let Some(pid) = pid {
        kill_group(pid);
    }
    let stdout = match out_task {
        Some(t) => t.await.unwrap_or_default(),
        None => String::new(),
    };
    if let Some(t) = err_task {
        let _ = t.await;
    }
    Ok(ScriptOutput {
        success: status.success(),
        stdout,
    })
}

fn kill_group(pid: u32) {
    // A negative pid addresses the process group the script leads.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Forwards lines to the log (when `forward`), or collects them (bounded) for the caller.
async fn pump(stream: impl AsyncRead + Unpin, log: BuildLog, forward: bool) -> String {
    const CAPTURE_LIMIT: usize = 1 << 20;
    let mut reader = BufReader::new(stream);
    let mut captured = String::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                if forward {
                    log.line(text);
                } else if captured.len() < CAPTURE_LIMIT {
                    captured.push_str(text);
                    captured.push('\n');
                }
            }
        }
    }
    captured
}
