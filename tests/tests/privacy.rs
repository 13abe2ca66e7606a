//! The history is as private as the socket, whatever started the daemon:
//! started with umask 000 (the loosest a shell can give it), the real
//! traceed leaves no file of the history readable by other users, tightens
//! a state directory and database left open by an earlier run, and refuses
//! to start (exit 78, the path, its mode and owner, and the fix) on a
//! config file or state directory that another user could change.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use traceed_tests::{bin, http_get, poll, unique, Daemon};

const EXIT_CONFIG: i32 = 78;
const NOBODY: u32 = 65534;

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("traceed-priv-{}", unique(tag)));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// The real traceed under `sh -c 'umask 000; exec traceed ...'`.
fn traceed_umask0(config: &Path, state: &Path, socket: &Path, log: &Path) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", "umask 000; exec \"$0\" \"$@\""])
        .arg(bin("traceed"))
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .arg("--socket")
        .arg(socket)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    c
}

fn start_umask0(root: &Path, state: &Path, socket: &Path, config_text: &str) -> Daemon {
    let config = root.join("traceed.toml");
    std::fs::write(&config, config_text).unwrap();
    chmod(&config, 0o644);
    let log = root.join("traceed.log");
    let child = traceed_umask0(&config, state, socket, &log)
        .spawn()
        .expect("spawn traceed");
    let mut d = Daemon {
        child,
        dir: state.to_path_buf(),
        socket: socket.to_path_buf(),
        log: log.clone(),
    };
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    poll(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("traceed exited with {st}:\n{}", log_text());
            }
            matches!(http_get(socket, "/healthz"), Ok((200, _))).then_some(())
        },
        || format!("traceed not ready:\n{}", log_text()),
    );
    // Something to store, so the WAL and its index exist.
    let marker = unique("priv");
    let _ = Command::new("/bin/true").arg(&marker).status();
    poll(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            d.events(&["--kind", "exec"])
                .iter()
                .any(|e| e.args["argv"].to_string().contains(&marker))
                .then_some(())
        },
        || "the marker exec was not stored".into(),
    );
    d
}

#[test]
fn started_with_umask_000_the_history_is_not_readable_by_others() {
    let root = scratch("u");
    let state = root.join("state/new");
    let run = root.join("run/traceed");
    let export = root.join("log/events.jsonl");
    let d = start_umask0(
        &root,
        &state,
        &run.join("traceed.sock"),
        &format!("[export]\njsonl = \"{}\"\n", export.display()),
    );
    assert_eq!(mode(&state), 0o750, "state directory");
    assert_eq!(mode(&run), 0o750, "runtime directory");
    for f in ["events.db", "events.db-wal", "events.db-shm"] {
        assert_eq!(mode(&state.join(f)), 0o640, "{f}");
    }
    assert_eq!(mode(&export), 0o640, "export file");
    // Nothing traceed created in its state directory is open to others.
    for ent in std::fs::read_dir(&state).unwrap().flatten() {
        let m = mode(&ent.path());
        assert_eq!(m & 0o007, 0, "{} is {m:04o}", ent.path().display());
    }
    drop(d);
}

#[test]
fn a_state_directory_and_database_left_open_earlier_are_tightened() {
    let root = scratch("t");
    let state = root.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let socket = root.join("traceed.sock");
    let mut d = start_umask0(&root, &state, &socket, "");
    d.stop();
    // An earlier version (or a hand) left them readable by everyone.
    chmod(&state, 0o755);
    for f in ["events.db", "events.db-wal", "events.db-shm"] {
        if state.join(f).exists() {
            chmod(&state.join(f), 0o644);
        }
    }
    let d = start_umask0(&root, &state, &socket, "");
    assert_eq!(mode(&state), 0o750);
    assert_eq!(mode(&state.join("events.db")), 0o640);
    drop(d);
}

/// Start traceed expecting a refusal: its exit status and stderr.
fn refused(config: &Path, state: &Path) -> (i32, String) {
    let out = Command::new(bin("traceed"))
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .arg("--socket")
        .arg(state.with_extension("sock"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_config_file_others_can_change_is_refused() {
    let root = scratch("c");
    let state = root.join("state");
    let config = root.join("traceed.toml");
    std::fs::write(&config, "[scope.exclude]\nuid = [1000]\n").unwrap();

    chmod(&config, 0o666);
    let (code, err) = refused(&config, &state);
    assert_eq!(code, EXIT_CONFIG, "{err}");
    assert!(err.contains(&config.display().to_string()), "{err}");
    assert!(err.contains("mode 0666"), "{err}");
    assert!(err.contains("writable by every user"), "{err}");
    assert!(
        err.contains(&format!("chmod o-w {}", config.display())),
        "{err}"
    );

    chmod(&config, 0o664);
    std::os::unix::fs::chown(&config, None, Some(NOBODY)).unwrap();
    let (code, err) = refused(&config, &state);
    assert_eq!(code, EXIT_CONFIG, "{err}");
    assert!(err.contains("writable by its group"), "{err}");
    assert!(err.contains("chmod g-w"), "{err}");

    chmod(&config, 0o644);
    std::os::unix::fs::chown(&config, Some(NOBODY), Some(0)).unwrap();
    let (code, err) = refused(&config, &state);
    assert_eq!(code, EXIT_CONFIG, "{err}");
    assert!(err.contains(&format!("owner uid {NOBODY}")), "{err}");
    assert!(
        err.contains(&format!("chown root {}", config.display())),
        "{err}"
    );
    assert!(
        !state.exists(),
        "a refused start created {}",
        state.display()
    );
}

#[test]
fn a_state_directory_others_can_change_is_refused() {
    let root = scratch("s");
    let config = root.join("traceed.toml");
    std::fs::write(&config, "").unwrap();
    let state = root.join("state");
    std::fs::create_dir_all(&state).unwrap();

    chmod(&state, 0o777);
    let (code, err) = refused(&config, &state);
    assert_eq!(code, EXIT_CONFIG, "{err}");
    assert!(err.contains("the state directory"), "{err}");
    assert!(err.contains("mode 0777"), "{err}");
    assert!(
        err.contains(&format!("chmod o-w {}", state.display())),
        "{err}"
    );

    chmod(&state, 0o750);
    std::os::unix::fs::chown(&state, Some(NOBODY), None).unwrap();
    let (code, err) = refused(&config, &state);
    assert_eq!(code, EXIT_CONFIG, "{err}");
    assert!(err.contains("owned by a user other than root"), "{err}");
    assert!(
        !state.join("events.db").exists(),
        "a refused start opened the store"
    );
}
