//! Fault matrix family `join_input`: what the join reads (tags, the config
//! file, ecs.config and the disk under it) is hostile, odd or broken. Each
//! case: the right exit code, ecs.config written only when it should be, and
//! a message that names the problem on one line.

use std::process::Command;

use crate::shared::{assert_one_error, cluster_tag, joined_over};
use blockwatch_testkit::instance::{tags, Instance, Run};

use blockwatch_core::tags::TAG_COMPUTE_ENVIRONMENT as CE_TAG;

#[tokio::test]
async fn hostile_compute_environment_tag_values_are_only_lookup_keys() {
    let instance = Instance::with_moto().await;
    instance.launch(&[("Name", "x")], true).await;
    let before = b"ECS_CLUSTER=previous\n".to_vec();
    instance.write_ecs_config(&before);
    let long = "c".repeat(256);
    for value in [
        "ce\nECS_ENABLE_PRIVILEGED=true",
        "ce=ECS_CLUSTER",
        "\"quoted\"",
        "Zürich-東京-\u{202e}",
        long.as_str(),
    ] {
        instance.imds.update(|s| s.tags = tags(&[(CE_TAG, value)]));
        let run = instance.join(&[]);
        assert_eq!(run.code, 65, "{value:?}: {}", run.stderr);
        assert_one_error(&run, &["not found"]);
        assert!(
            run.stderr.lines().all(|l| l.starts_with("blockwatch: ")),
            "every line is ours: {}",
            run.stderr
        );
        assert!(!run.stderr.contains('\u{202e}'), "{}", run.stderr);
        assert_eq!(
            instance.read_ecs_config(),
            Some(before.clone()),
            "{value:?}"
        );
    }
}

#[tokio::test]
async fn a_cluster_tag_of_default_is_refused_with_78() {
    let instance = Instance::without_aws();
    cluster_tag(&instance, "default");
    instance.write_ecs_config(b"A=1\n");

    let run = instance.join(&[]);

    assert_eq!(run.code, 78, "{}", run.stderr);
    assert_one_error(
        &run,
        &["\"default\" is refused", "instance tag blockwatch:cluster"],
    );
    assert_eq!(instance.read_ecs_config(), Some(b"A=1\n".to_vec()));
}

#[tokio::test]
async fn an_unknown_compute_environment_exits_65_and_leaves_the_file() {
    let instance = Instance::with_moto().await;
    instance.launch(&[(CE_TAG, "nowhere")], true).await;
    instance.write_ecs_config(b"ECS_CLUSTER=previous\n");

    let run = instance.join(&[]);

    assert_eq!(run.code, 65, "{}", run.stderr);
    assert_one_error(&run, &["compute environment \"nowhere\" not found"]);
    assert_eq!(
        instance.read_ecs_config(),
        Some(b"ECS_CLUSTER=previous\n".to_vec())
    );
}

#[tokio::test]
async fn a_managed_compute_environment_exits_65_and_writes_nothing() {
    let instance = Instance::with_moto().await;
    instance.moto().create_managed_ce("managed").await.unwrap();
    instance.launch(&[(CE_TAG, "managed")], true).await;

    let run = instance.join(&[]);

    assert_eq!(run.code, 65, "{}", run.stderr);
    assert_one_error(&run, &["\"managed\" is MANAGED"]);
    assert_eq!(instance.read_ecs_config(), None);
}

#[tokio::test]
async fn a_config_file_with_an_unknown_key_exits_78_naming_the_key() {
    let instance = Instance::without_aws();
    cluster_tag(&instance, "c1");
    let path = instance.write_config("cluster = \"c1\"\npoweroff_comand = \"true\"\n");

    let run = instance.join(&[]);

    assert_eq!(run.code, 78, "{}", run.stderr);
    assert_one_error(
        &run,
        &[&path.display().to_string(), "line 2", "poweroff_comand"],
    );
    assert_eq!(instance.read_ecs_config(), None);
}

#[tokio::test]
async fn a_config_file_with_a_wrong_type_exits_78_naming_the_line() {
    let instance = Instance::without_aws();
    instance.write_config("cluster = \"c1\"\ndrain_on_rebalance = \"yes\"\n");

    let run = instance.join(&[]);

    assert_eq!(run.code, 78, "{}", run.stderr);
    assert_one_error(&run, &["line 2", "invalid type"]);
    assert_eq!(instance.read_ecs_config(), None);
}

#[tokio::test]
async fn a_config_file_that_is_not_utf8_exits_78_naming_the_line() {
    let instance = Instance::without_aws();
    let path = instance.write_config("cluster = \"c1\"\n");
    std::fs::write(&path, b"cluster = \"c1\"\n# caf\xe9\n").unwrap();

    let run = instance.join(&[]);

    assert_eq!(run.code, 78, "{}", run.stderr);
    assert_one_error(&run, &["line 2", "not UTF-8"]);
    assert_eq!(instance.read_ecs_config(), None);
}

#[tokio::test]
async fn an_empty_config_file_falls_back_to_the_tags() {
    let instance = Instance::without_aws();
    cluster_tag(&instance, "from-tag");
    instance.write_config("");

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    run.assert_stderr_has("is empty");
    assert_eq!(
        instance.read_ecs_config(),
        Some(b"ECS_CLUSTER=from-tag\n".to_vec())
    );
}

#[tokio::test]
async fn a_config_path_that_is_a_directory_exits_78() {
    let instance = Instance::without_aws();
    cluster_tag(&instance, "c1");
    let dir = instance.root.path().join("conf.d");
    std::fs::create_dir(&dir).unwrap();

    let run: Run = instance
        .command()
        .arg("join")
        .arg("--config")
        .arg(&dir)
        .arg("--ecs-config")
        .arg(instance.ecs_config())
        .output()
        .unwrap()
        .into();

    assert_eq!(run.code, 78, "{}", run.stderr);
    assert_one_error(&run, &["conf.d", "is a directory"]);
    assert_eq!(instance.read_ecs_config(), None);
}

#[tokio::test]
async fn ecs_config_with_crlf_line_endings_gets_lf_and_keeps_every_other_line() {
    let (instance, _) = joined_over(b"A=1\r\nECS_CLUSTER=old\r\nB=2\r\n");
    assert_eq!(
        instance.read_ecs_config(),
        Some(b"A=1\nECS_CLUSTER=c1\nB=2\n".to_vec())
    );
}

#[tokio::test]
async fn ecs_config_with_a_byte_order_mark_keeps_it_before_another_key() {
    let (instance, _) = joined_over(b"\xef\xbb\xbfECS_LOGLEVEL=info\n");
    assert_eq!(
        instance.read_ecs_config(),
        Some(b"\xef\xbb\xbfECS_LOGLEVEL=info\nECS_CLUSTER=c1\n".to_vec())
    );

    // A mark in front of an old ECS_CLUSTER: that line is ours and replaced.
    instance.write_ecs_config(b"\xef\xbb\xbfECS_CLUSTER=old\nA=1\n");
    let run = instance.join(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        instance.read_ecs_config(),
        Some(b"ECS_CLUSTER=c1\nA=1\n".to_vec())
    );
}

#[tokio::test]
async fn ecs_config_without_a_final_newline_gets_one() {
    let (instance, _) = joined_over(b"A=1");
    assert_eq!(
        instance.read_ecs_config(),
        Some(b"A=1\nECS_CLUSTER=c1\n".to_vec())
    );
}

#[tokio::test]
async fn ecs_config_with_quoted_and_duplicate_cluster_keys_ends_with_one_plain_line() {
    let (instance, run) = joined_over(
        b"ECS_CLUSTER=\"c1\"\nA=\"quoted value\"\n ECS_CLUSTER = spaced \nECS_CLUSTER=last\n",
    );
    assert_eq!(
        instance.read_ecs_config(),
        Some(b"ECS_CLUSTER=c1\nA=\"quoted value\"\n".to_vec())
    );
    run.assert_stderr_has("(was last)");
}

#[tokio::test]
async fn ecs_config_with_a_megabyte_of_other_keys_keeps_them_byte_for_byte() {
    let instance = Instance::without_aws();
    cluster_tag(&instance, "c1");
    let mut before = Vec::new();
    let mut n = 0;
    while before.len() < 1 << 20 {
        // Latin-1 é: not UTF-8, kept as is.
        before.extend_from_slice(format!("ECS_KEY_{n}=value-{n}-").as_bytes());
        before.extend_from_slice(b"caf\xe9\n");
        n += 1;
    }
    instance.write_ecs_config(&before);

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut expected = before;
    expected.extend_from_slice(b"ECS_CLUSTER=c1\n");
    assert!(
        instance.read_ecs_config() == Some(expected),
        "content differs"
    );
}

#[tokio::test]
async fn ecs_config_that_is_a_directory_exits_74() {
    let instance = Instance::without_aws();
    cluster_tag(&instance, "c1");
    std::fs::create_dir_all(instance.ecs_config()).unwrap();

    let run = instance.join(&[]);

    assert_eq!(run.code, 74, "{}", run.stderr);
    assert_one_error(&run, &["is a directory, not a regular file"]);
    assert!(instance.ecs_config().is_dir());
}

/// Runs `blockwatch join` in a private mount namespace where `dir` is a
/// tiny tmpfs prepared by `setup` (shell, with `$D` the directory);
/// returns the run, ecs.config afterwards, and the directory's listing
/// (both read before the namespace, and its mount, go away).
fn join_on_a_tiny_tmpfs(instance: &Instance, setup: &str) -> (Run, Vec<u8>, String) {
    let dir = instance.root.path().join("tiny");
    let out = instance.root.path().join("out");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let ecs_config = dir.join("ecs.config");
    let mut inner = instance.command();
    inner
        .arg("join")
        .arg("--ecs-config")
        .arg(&ecs_config)
        .arg("--state-dir")
        .arg(instance.state_dir());
    let script = format!(
        r#"set -e
D="$0"; O="$1"; shift
mount -t tmpfs -o size=64k,mode=0755 blockwatch-test "$D"
{setup}
set +e
"$@" 2>"$O/stderr"
echo $? >"$O/code"
cat "$D/ecs.config" >"$O/after"
ls -A "$D" >"$O/listing""#
    );
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(&dir)
        .arg(&out)
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_clear()
        .envs(
            inner
                .get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .status()
        .unwrap();
    assert!(status.success(), "namespace script failed: {status}");
    let read = |name: &str| std::fs::read(out.join(name)).unwrap();
    let run = Run {
        code: String::from_utf8(read("code"))
            .unwrap()
            .trim()
            .parse()
            .unwrap(),
        stdout: String::new(),
        stderr: String::from_utf8(read("stderr")).unwrap(),
    };
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "the tmpfs was private to the namespace"
    );
    (
        run,
        read("after"),
        String::from_utf8(read("listing")).unwrap(),
    )
}

const OLD: &str = "ECS_CLUSTER=previous\nECS_ENGINE_AUTH_TYPE=docker\n";

fn assert_untouched(after: &[u8], listing: &str, keep: &[&str]) {
    assert_eq!(after, OLD.as_bytes());
    let mut names: Vec<&str> = listing.lines().collect();
    names.sort_unstable();
    assert_eq!(names, keep, "no temp file left behind");
}

#[tokio::test]
async fn ecs_config_on_a_read_only_filesystem_exits_74_and_is_untouched() {
    let instance = Instance::without_aws();
    cluster_tag(&instance, "c1");
    let setup = format!(
        "printf '{}' >\"$D/ecs.config\"\nmount -o remount,ro \"$D\"",
        OLD.replace('\n', "\\n")
    );

    let (run, after, listing) = join_on_a_tiny_tmpfs(&instance, &setup);

    assert_eq!(run.code, 74, "{}", run.stderr);
    assert_one_error(
        &run,
        &["ecs.config", "could not write it", "Read-only file system"],
    );
    assert_untouched(&after, &listing, &["ecs.config"]);
}

#[tokio::test]
async fn ecs_config_on_a_full_disk_exits_74_and_is_untouched() {
    let instance = Instance::without_aws();
    cluster_tag(&instance, "c1");
    let setup = format!(
        "printf '{}' >\"$D/ecs.config\"\ndd if=/dev/zero of=\"$D/filler\" bs=4096 2>/dev/null || true",
        OLD.replace('\n', "\\n")
    );

    let (run, after, listing) = join_on_a_tiny_tmpfs(&instance, &setup);

    assert_eq!(run.code, 74, "{}", run.stderr);
    assert_one_error(
        &run,
        &[
            "ecs.config",
            "could not write it",
            "No space left on device",
        ],
    );
    assert_untouched(&after, &listing, &["ecs.config", "filler"]);
}
