//! The `ringgate` binary: `run` (the default), `check`, `--version`. Signals are handled here:
//! SIGTERM/SIGINT drain and exit, SIGHUP reloads the config file, SIGUSR1 reopens access log
//! files. anyhow lives only here.

use std::io::IsTerminal;
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ringgate::accesslog;
use ringgate::config::{self, Config};
use ringgate::control::activation;
use ringgate::control::admin::{self, AdminState};
use ringgate::control::notify::Notifier;
use ringgate::control::reload;
use ringgate::server::Server;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where `run` looks for its config when none is given.
const SYSTEM_CONFIG: &str = "/etc/ringgate/ringgate.toml";

#[derive(Parser)]
#[command(
    name = "ringgate",
    version,
    about = "HTTP/1.1 API gateway: one pinned worker per core"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default). Config: --config, else /etc/ringgate/ringgate.toml if it
    /// exists, else the embedded default.
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print a summary, or the error with line, column and key.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Read an API key from standard input (one line) and print the SHA-256 hex digest that a
    /// key file holds for it (`NAME:DIGEST`); the key itself never goes in the file.
    HashKey,
}

fn main() -> ExitCode {
    // Before any thread starts: it edits the environment.
    let inherited = activation::take_listeners();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check { config }) => check(&config),
        Some(Command::Run { config }) => run(config, inherited),
        Some(Command::HashKey) => hash_key(),
        None => run(None, inherited),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn hash_key() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the key from standard input")?;
    let key = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!key.is_empty(), "no key on standard input");
    println!("{}", ringgate::access::hash_key(key));
    Ok(())
}

fn check(path: &Path) -> anyhow::Result<()> {
    let config = config::load(path)?;
    println!("{}: ok\n{}", path.display(), config.summary());
    Ok(())
}

/// The config file to use (None: the embedded default) and the config itself.
fn initial_config(path: Option<PathBuf>) -> anyhow::Result<(Option<PathBuf>, Config)> {
    let path = path.or_else(|| {
        Path::new(SYSTEM_CONFIG)
            .exists()
            .then(|| SYSTEM_CONFIG.into())
    });
    match path {
        Some(path) => {
            let config = config::load(&path)?;
            Ok((Some(path), config))
        }
        None => Ok((
            None,
            config::parse(config::EMBEDDED, config::EMBEDDED_ORIGIN)?,
        )),
    }
}

fn run(path: Option<PathBuf>, inherited: Vec<TcpListener>) -> anyhow::Result<()> {
    let (path, config) = initial_config(path)?;
    let origin = path
        .as_deref()
        .map_or(config::EMBEDDED_ORIGIN.to_owned(), |p| {
            p.display().to_string()
        });
    let drain_timeout = config.server.drain_timeout;
    let admin = config.admin.as_ref().map(|a| a.listen);
    // Blocked before the workers start, so they inherit the mask and only sigwait below sees
    // these signals.
    let signals = block_signals();
    let notifier = Notifier::from_env().context("NOTIFY_SOCKET")?;
    let tls: Vec<bool> = config.server.listen.iter().map(|l| l.tls).collect();
    let server = Server::start_with(config, inherited).context("start-up failed")?;
    for (addr, tls) in server.addrs.iter().zip(tls) {
        tracing::info!("listening on {addr}{}", ringgate::server::tls_note(tls));
    }
    let admin_state = Arc::new(AdminState {
        control: server.control(),
        snapshot: server.snapshot(),
        workers: server.drivers.len(),
        draining: AtomicBool::new(false),
        config_path: path.clone(),
    });
    if let Some(addr) = admin {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("admin listener on {addr}"))?;
        tracing::info!("admin listening on {}", listener.local_addr()?);
        admin::spawn(listener, Arc::clone(&admin_state)).context("admin thread")?;
    }
    tracing::info!(config = %origin, workers = server.drivers.len(), "ready");
    notify(&notifier, "READY=1");
    // systemd's watchdog: ping at half its interval, and only while every worker answers
    // the control thread (a wedged worker stops the pings, and systemd restarts us).
    let watchdog = notifier.watchdog_interval();
    let control = server.control();
    loop {
        let signal = match watchdog {
            Some(interval) => wait_for_timeout(&signals, interval / 2),
            None => Some(wait_for(&signals)),
        };
        let Some(signal) = signal else {
            match control.metrics() {
                Ok(_) => notify(&notifier, "WATCHDOG=1"),
                Err(e) => {
                    tracing::error!("a worker does not answer; withholding the watchdog ping: {e}")
                }
            }
            continue;
        };
        match signal {
            libc::SIGUSR1 => {
                // Workers reopen their access log files at their next flush (logrotate).
                accesslog::REOPEN.fetch_add(1, Ordering::Relaxed);
                tracing::info!("reopening access logs");
            }
            libc::SIGHUP => {
                if let Err(e) = notifier.reloading() {
                    tracing::warn!("sd_notify: {e}");
                }
                // Logged either way; SIGHUP has no one to answer.
                let _ = reload::reload(path.as_deref(), &server.snapshot(), &control);
                notify(&notifier, "READY=1");
            }
            sig => {
                notify(&notifier, "STOPPING=1");
                admin_state.draining.store(true, Ordering::Relaxed);
                tracing::info!(signal = sig, ?drain_timeout, "draining");
                // A second SIGTERM/SIGINT means "now": cut what is still in flight.
                std::thread::spawn(move || loop {
                    if !matches!(wait_for(&signals), libc::SIGHUP | libc::SIGUSR1) {
                        tracing::warn!("second stop signal: exiting without waiting for the drain");
                        std::process::exit(1);
                    }
                });
                if server.shutdown(drain_timeout) {
                    tracing::info!("stopped");
                } else {
                    tracing::warn!("drain_timeout passed with requests in flight; stopping anyway");
                }
                return Ok(());
            }
        }
    }
}

/// Tells systemd (if it is listening) about a state change; a failure is logged, not fatal.
fn notify(notifier: &Notifier, state: &str) {
    if let Err(e) = notifier.send(state) {
        tracing::warn!("sd_notify {state}: {e}");
    }
}

fn block_signals() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: `set` is a valid sigset_t to initialise; the calls only read and write it and
    // this thread's signal mask.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
        set.assume_init()
    }
}

/// The next signal of `set`, or None after `timeout`.
fn wait_for_timeout(set: &libc::sigset_t, timeout: std::time::Duration) -> Option<libc::c_int> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` was initialised by `block_signals`; a null siginfo is allowed.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

fn wait_for(set: &libc::sigset_t) -> libc::c_int {
    let mut sig = 0;
    // SAFETY: `set` was initialised by `block_signals`; `sig` is a valid out-pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}
