//! The command line: config errors exit 2 naming the key; `config` and `migrate` commands.

use std::process::Output;

use crate::support::{Database, Setup, file_log_events};

fn run(setup: &Setup, args: &[&str]) -> Output {
    setup.command(args).output().expect("run logicore")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let cases = [
        (
            Setup::new(Database::Sqlite).config("[gateway]\nlistne = \"x\"\n"),
            "gateway.listne",
        ),
        (
            Setup::new(Database::Sqlite).env("LOGICORE_GATEWAY__BODY_LIMIT", "huge"),
            "gateway.body_limit",
        ),
        (
            Setup::new(Database::Sqlite).env("LOGICORE_DATABASE__MAX_CONNECTIONS", "0"),
            "database.max_connections",
        ),
        (
            Setup::new(Database::Sqlite).config("[log]\nformat = \"xml\"\n"),
            "log.format",
        ),
    ];
    for (setup, key) in cases {
        for command in [["up"].as_slice(), ["config", "check"].as_slice()] {
            let output = run(&setup, command);
            assert_eq!(
                output.status.code(),
                Some(2),
                "{command:?} with a bad {key}"
            );
            assert!(
                stderr(&output).contains(key),
                "{key} not named: {}",
                stderr(&output)
            );
        }
    }
}

#[test]
fn backends_not_built_yet_exit_2_saying_so() {
    let setup = Setup::new(Database::Sqlite).env(
        "LOGICORE_DISCOVERY__URL",
        "consul://consul:hunter2@127.0.0.1:8500",
    );
    let output = run(&setup, &["up"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("not yet supported"),
        "{}",
        stderr(&output)
    );
    assert!(
        !stderr(&output).contains("hunter2"),
        "password leaked: {}",
        stderr(&output)
    );
}

#[test]
fn config_show_prints_the_effective_config_without_secrets() {
    let setup = Setup::new(Database::Sqlite)
        .config("[internal]\ntoken_key = \"super-secret\"\n[database]\nurl = \"postgres://app:pw123@db/app\"\n");
    let output = run(&setup, &["config", "show"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        !shown.contains("super-secret") && !shown.contains("pw123"),
        "{shown}"
    );
    assert!(shown.contains("body_limit = \"1MiB\""), "{shown}");
    assert!(shown.contains("postgres://app:***@db/app"), "{shown}");
}

#[test]
fn migrate_applies_and_reports_the_schema_history() {
    let setup = Setup::new(Database::Sqlite);
    let status = run(&setup, &["migrate", "--status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let pending = String::from_utf8_lossy(&status.stdout)
        .matches("pending")
        .count();
    assert!(pending > 0, "nothing pending on a fresh database");

    let applied = run(&setup, &["migrate"]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let expected = format!("{pending} migration(s) applied");
    assert!(
        String::from_utf8_lossy(&applied.stdout).contains(&expected),
        "{}",
        String::from_utf8_lossy(&applied.stdout)
    );

    let status = run(&setup, &["migrate", "--status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(!text.contains("pending"), "{text}");
    assert!(text.contains("catalog") && text.contains("users"), "{text}");
}

/// `up` creates the field-encryption key file (owner-only) on first start and keeps it;
/// `keys rotate` puts a new active key in front; `keys generate` prints a usable key.
#[test]
fn up_creates_the_key_file_once_and_keys_rotate_adds_an_active_key() {
    let setup = Setup::new(Database::Sqlite);
    let key_file = setup.data_dir().join("encryption.keys");
    let platform = setup.start();
    platform.terminate();
    assert!(platform.wait().success());
    let said = |message: &str| {
        file_log_events(&setup.data_dir().join("logs"))
            .iter()
            .any(|event| event["message"] == message)
    };
    assert!(said(
        "generated a field-encryption key file; back it up: without it encrypted data is lost"
    ));
    let first = std::fs::read_to_string(&key_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = setup.start();
    again.terminate();
    assert!(again.wait().success());
    assert!(said("field-encryption keys loaded"));
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), first, "kept");

    let rotated = run(&setup, &["keys", "rotate"]);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let now = std::fs::read_to_string(&key_file).unwrap();
    let lines: Vec<&str> = now.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1], first.trim(), "the old key stays, second");
    let new_kid = lines[0].split(':').next().unwrap();
    assert!(String::from_utf8_lossy(&rotated.stdout).contains(new_kid));

    let printed = run(&setup, &["keys", "generate"]);
    assert!(printed.status.success());
    let entry = String::from_utf8(printed.stdout).unwrap();
    let from_env = setup
        .command(&["keys", "rotate"])
        .env("LOGICORE_ENCRYPTION_KEYS", entry.trim())
        .output()
        .unwrap();
    assert!(from_env.status.success(), "{}", stderr(&from_env));
    let advice = String::from_utf8(from_env.stdout).unwrap();
    assert!(
        advice.trim_end().ends_with(&format!(",{}", entry.trim())),
        "prints the new LOGICORE_ENCRYPTION_KEYS value: {advice}"
    );
}

/// A malformed key stops start-up with a message naming what to set.
#[test]
fn a_malformed_encryption_key_stops_start_up() {
    let setup = Setup::new(Database::Sqlite).env("LOGICORE_ENCRYPTION_KEYS", "k1:not-base64!");
    let output = setup.command(&["up"]).output().expect("run logicore up");
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("LOGICORE_ENCRYPTION_KEYS") && message.contains("base64"),
        "{message}"
    );
}
