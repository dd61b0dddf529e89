//! A PostgreSQL cluster of the test's own (`initdb` into a temporary directory, run as the
//! `postgres` user, on a free loopback port), for tests that stop, restart or cut the
//! database: never the shared service the rest of the suite uses.

use std::path::PathBuf;
use std::process::Command;

use super::{Backend, TestDb};

pub struct PrivateCluster {
    /// Holds the data directory and the socket directory; owned by `postgres`.
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// Serves TLS only (see [`PrivateCluster::start_tls`]).
    tls: bool,
}

/// Runs a PostgreSQL program as the `postgres` user (PostgreSQL refuses root).
fn as_postgres(program: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .expect("runuser")
}

impl PrivateCluster {
    /// A new, running cluster; the test is skipped when PostgreSQL's programs are not
    /// installed (and `KEYSTONE_REQUIRE_POSTGRES` is not set).
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A new, running cluster that accepts TCP connections over TLS only, with `pki`'s
    /// server certificate (and refuses them in clear text).
    pub fn start_tls(pki: &super::TestPki) -> Self {
        Self::start_with(Some(pki))
    }

    fn start_with(pki: Option<&super::TestPki>) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .filter_map(|v| v.ok().map(|v| v.path().join("bin")))
                    .find(|bin| bin.join("pg_ctl").exists())
            });
        let Some(bin) = bin else {
            super::unavailable(
                "KEYSTONE_REQUIRE_POSTGRES",
                "PostgreSQL's programs (/usr/lib/postgresql/*/bin/pg_ctl) are not installed",
            );
        };
        let dir = tempfile::Builder::new()
            .prefix("keystone-pg-")
            .tempdir()
            .expect("temp dir");
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(status.success(), "chown the cluster directory to postgres");
        let port = super::free_port();
        let cluster = Self {
            dir,
            bin,
            port,
            tls: pki.is_some(),
        };
        let data = cluster.data();
        let out = as_postgres(
            &cluster.bin.join("initdb"),
            &["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync"],
        );
        assert!(out.status.success(), "initdb: {out:?}");
        if let Some(pki) = pki {
            let data = std::path::Path::new(&data);
            for (name, pem) in [("server.crt", &pki.cert_pem), ("server.key", &pki.key_pem)] {
                let path = data.join(name);
                std::fs::write(&path, pem).expect("write the server's certificate");
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .expect("chmod");
                let status = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&path)
                    .status()
                    .expect("chown");
                assert!(status.success());
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostnossl all all 127.0.0.1/32 reject\n",
            )
            .expect("write pg_hba.conf");
        }
        cluster.start_again();
        cluster
    }

    /// One of the cluster's PostgreSQL programs (`pg_dump`, `pg_restore`, `psql`, …).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// The URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// A test database that is this cluster's `postgres` database.
    pub fn test_db(&self) -> TestDb {
        TestDb::at(Backend::Postgres, self.url("postgres"))
    }

    /// Starts the (stopped) cluster and waits until it accepts connections.
    pub fn start_again(&self) {
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=60",
            self.port,
            self.dir.path().display()
        );
        if self.tls {
            options.push_str(" -c ssl=on");
        }
        let log = self.dir.path().join("postgres.log").display().to_string();
        let out = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "start",
                "-w",
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {out:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the cluster: `fast` ends sessions and rolls back what they had not committed;
    /// `immediate` is a crash.
    pub fn stop(&self, mode: &str) {
        let out = as_postgres(
            &self.bin.join("pg_ctl"),
            &["stop", "-w", "-D", &self.data(), "-m", mode],
        );
        assert!(out.status.success(), "pg_ctl stop: {out:?}");
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = as_postgres(
            &self.bin.join("pg_ctl"),
            &["stop", "-D", &self.data(), "-m", "immediate"],
        );
    }
}
