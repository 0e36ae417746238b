//! A throwaway PostgreSQL cluster for the server-crash tests (`tests/faults_cluster.rs`):
//! `initdb` into a temporary directory, `pg_ctl start` on a free port with fsync on, crashed and
//! restarted with `pg_ctl restart -m immediate`, stopped and removed when dropped. As root, the
//! server binaries run as `postgres` through `runuser`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use uuid::Uuid;

/// The directory of `initdb` and `pg_ctl`: `EVENTFOLD_PG_BIN`, the newest
/// `/usr/lib/postgresql/*/bin`, or the directory of `pg_ctl` on `PATH`. Panics when none has both.
pub fn server_binaries() -> PathBuf {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(dir) = std::env::var("EVENTFOLD_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            has_both(&dir),
            "EVENTFOLD_PG_BIN={} has no initdb and pg_ctl",
            dir.display()
        );
        return dir;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_both(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return dir;
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| has_both(dir));
    on_path.unwrap_or_else(|| {
        panic!(
            "the PostgreSQL server binaries (initdb, pg_ctl) were not found in EVENTFOLD_PG_BIN, \
             /usr/lib/postgresql/*/bin or PATH: install the PostgreSQL server (Debian: \
             postgresql) to run the server-restart faults"
        )
    })
}

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// A throwaway PostgreSQL cluster: stopped (immediately) and its directory removed when dropped.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Run the server binaries as `postgres` (this process is root).
    as_postgres: bool,
    pub restarts: usize,
}

impl Cluster {
    /// `initdb` (trust authentication, user `postgres`) and `pg_ctl start` with fsync on.
    pub fn start() -> Self {
        let bin = server_binaries();
        let as_postgres = run_plain(Command::new("id").arg("-u"))
            .trim()
            .parse::<u32>()
            .expect("the uid of this process")
            == 0;
        let dir = std::env::temp_dir().join(format!("eventfold-cluster-{}", Uuid::now_v7()));
        std::fs::create_dir(&dir).expect("create the cluster's directory");
        let cluster = Cluster {
            bin,
            dir,
            port: free_port(),
            as_postgres,
            restarts: 0,
        };
        if as_postgres {
            // initdb refuses to run as root: the postgres user owns the directory and runs the
            // server binaries.
            run_plain(
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&cluster.dir),
            );
        }
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--no-instructions",
            ],
        );
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on \
             -c max_connections=60",
            cluster.port,
            cluster.dir.display()
        );
        let log = cluster.log();
        cluster.run(
            "pg_ctl",
            &[
                "start", "-D", &data, "-l", &log, "-w", "-t", "60", "-o", &options,
            ],
        );
        eprintln!(
            "cluster: {} on port {} (binaries {}{})",
            cluster.dir.display(),
            cluster.port,
            cluster.bin.display(),
            if as_postgres {
                ", run as postgres through runuser"
            } else {
                ""
            }
        );
        cluster
    }

    pub fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    pub fn log(&self) -> String {
        self.dir.join("server.log").display().to_string()
    }

    pub fn database_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// Runs a server binary; panics with its output when it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        let output = self
            .command(program)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed ({}): {}{}\nserver log: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
        output
    }

    /// A crash and a restart: `pg_ctl restart -m immediate` (every backend killed without a
    /// checkpoint; the server recovers from its WAL), waiting until it accepts connections.
    pub fn crash_and_restart(&mut self) {
        let (data, log) = (self.data(), self.log());
        self.run(
            "pg_ctl",
            &[
                "restart",
                "-D",
                &data,
                "-l",
                &log,
                "-m",
                "immediate",
                "-w",
                "-t",
                "60",
            ],
        );
        self.restarts += 1;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let stopped = self
            .command("pg_ctl")
            .args(["stop", "-D", &data, "-m", "immediate", "-w"])
            .output();
        if let Err(e) = &stopped {
            eprintln!("cluster: stopping {} failed: {e}", self.dir.display());
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cluster: removing {} failed: {e}", self.dir.display());
        }
    }
}

/// `EVENTFOLD_CLUSTER_RESTARTS` (default 3, at least 1), and a started cluster.
pub async fn started_cluster() -> (Cluster, usize) {
    let restarts = super::common::env_number("EVENTFOLD_CLUSTER_RESTARTS", 3);
    assert!(
        restarts >= 1,
        "EVENTFOLD_CLUSTER_RESTARTS must be at least 1"
    );
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .expect("starting the cluster");
    (cluster, restarts)
}

/// A pool of 16 connections to `database` on the cluster, waiting up to 5 s for one.
pub async fn pool_on(cluster: &Cluster, database: &str) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&cluster.database_url(database))
        .await
        .unwrap_or_else(|e| panic!("connect to {database} on the cluster: {e}"))
}

/// The cluster crashed and restarted (see [`Cluster::crash_and_restart`]), off the runtime.
pub async fn crashed(mut cluster: Cluster) -> Cluster {
    tokio::task::spawn_blocking(move || {
        cluster.crash_and_restart();
        cluster
    })
    .await
    .expect("restarting the cluster")
}

/// Runs a command that must succeed; its stdout.
pub fn run_plain(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
