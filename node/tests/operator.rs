//! The operator commands through the real binary: `keygen`, `init-testnet`, `node --config`,
//! `node --genesis`.

use std::{
    collections::HashSet,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_kestrel");
/// How long a node gets to start answering JSON-RPC, and to shut down.
const NODE_TIMEOUT: Duration = Duration::from_secs(60);

fn kestrel(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run kestrel")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A JSON-RPC call over a bare HTTP/1.1 request; `None` while nothing answers.
fn rpc(port: u16, method: &str, params: serde_json::Value) -> Option<serde_json::Value> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        .to_string();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let json = response.split("\r\n\r\n").nth(1)?;
    let mut value: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(value["result"].take())
}

fn eth_chain_id(port: u16) -> Option<String> {
    rpc(port, "eth_chainId", serde_json::json!([]))?
        .as_str()
        .map(str::to_owned)
}

/// Polls `answer` until it gives a value; fails with the node's log if the node exits first or
/// nothing answers within [`NODE_TIMEOUT`].
fn wait_for_answer<T>(node: &mut Child, log: &Path, answer: impl Fn() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = answer() {
            return value;
        }
        if let Some(status) = node.try_wait().unwrap() {
            panic!(
                "node exited with {status}: {}",
                std::fs::read_to_string(log).unwrap()
            );
        }
        assert!(started.elapsed() < NODE_TIMEOUT, "node did not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes a password file with `mode`.
fn password_file(path: &Path, password: &str, mode: u32) {
    std::fs::write(path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `kestrel keygen` with light scrypt parameters; the address it printed.
fn keygen(out: &Path, password_file: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "keygen",
        "--out",
        out.to_str().unwrap(),
        "--password-file",
        password_file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    kestrel(&args)
}

fn printed_address(out: &Output) -> String {
    let stdout = text(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("address:    "))
        .unwrap_or_else(|| panic!("no address in {stdout}"))
        .to_owned()
}

fn spawn_node(args: &[&str], log: &Path) -> Child {
    let file = std::fs::File::create(log).unwrap();
    Command::new(BIN)
        .arg("node")
        .args(args)
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn init_testnet(out: &Path, validators: u16, ports: [u16; 3]) -> Output {
    kestrel(&[
        "init-testnet",
        "--validators",
        &validators.to_string(),
        "--out",
        out.to_str().unwrap(),
        "--chain-id",
        "31337",
        "--base-p2p-port",
        &ports[0].to_string(),
        "--base-rpc-port",
        &ports[1].to_string(),
        "--base-metrics-port",
        &ports[2].to_string(),
        "--scrypt-light",
    ])
}

#[test]
fn keygen_writes_an_encrypted_keystore_once_with_geths_standard_scrypt() {
    let dir = tempfile::tempdir().unwrap();
    let (path, pw) = (dir.path().join("keystore.json"), dir.path().join("pw"));
    password_file(&pw, "correct horse battery", 0o600);
    let started = Instant::now();
    let out = keygen(&path, &pw, &[]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mode(&path), 0o600);
    let keystore: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(keystore["version"], 3);
    assert_eq!(keystore["crypto"]["kdf"], "scrypt");
    assert_eq!(
        keystore["crypto"]["kdfparams"]["n"], 262144,
        "geth's standard n"
    );
    let address = printed_address(&out);
    assert_eq!(
        format!("0x{}", keystore["address"].as_str().unwrap()),
        address.to_lowercase()
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("public key: 0x0"), "{stdout}");
    assert!(
        !stdout.contains("correct horse"),
        "the password is never printed"
    );
    eprintln!("keygen with n=262144 took {took:?}");

    let before = std::fs::read_to_string(&path).unwrap();
    let again = keygen(&path, &pw, &["--scrypt-light"]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("refusing to overwrite"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before, "untouched");

    password_file(&pw, "correct horse battery", 0o644);
    let out = keygen(&dir.path().join("other.json"), &pw, &["--scrypt-light"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(!dir.path().join("other.json").exists());
}

/// `keygen` then `node` with that keystore and its password file: the node starts and its blocks'
/// fee recipient (the validator's address) is the address keygen printed. A password file that
/// others can read, or a wrong password, stops the node before it opens anything, non-zero.
#[test]
fn node_opens_the_keystore_keygen_wrote_and_refuses_bad_password_files() {
    let dir = tempfile::tempdir().unwrap();
    let (path, pw) = (dir.path().join("keystore.json"), dir.path().join("pw"));
    password_file(&pw, "s3cret pass", 0o600);
    let out = keygen(&path, &pw, &["--scrypt-light"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let address = printed_address(&out).to_lowercase();

    let port = free_port();
    let metrics = format!("127.0.0.1:{}", free_port());
    let datadir = dir.path().join("data");
    let node_args = |password_file: &Path| {
        vec![
            "--dev".to_owned(),
            "--datadir".into(),
            datadir.to_str().unwrap().into(),
            "--http-port".into(),
            port.to_string(),
            "--metrics".into(),
            metrics.clone(),
            "--validator-key".into(),
            path.to_str().unwrap().into(),
            "--password-file".into(),
            password_file.to_str().unwrap().into(),
        ]
    };
    let args = node_args(&pw);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = dir.path().join("node.log");
    let mut node = spawn_node(&args, &log);
    let miner = wait_for_answer(&mut node, &log, || {
        let block = rpc(
            port,
            "eth_getBlockByNumber",
            serde_json::json!(["0x1", false]),
        )?;
        block["miner"].as_str().map(str::to_owned)
    });
    node.kill().unwrap();
    node.wait().unwrap();
    assert_eq!(
        miner, address,
        "block 1's fee recipient is the keystore's address"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains("s3cret"), "the password was logged");

    let refused = |password_file: &Path, expect: &[&str]| {
        let args = node_args(password_file);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = kestrel(&[&["node"], &args[..]].concat());
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        for e in expect {
            assert!(stderr.contains(e), "{e}: {stderr}");
        }
    };
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(&pw, &[pw.to_str().unwrap(), "mode 644", "chmod 600"]);
    let wrong = dir.path().join("wrong");
    password_file(&wrong, "not it", 0o600);
    refused(&wrong, &["keystore.json", "wrong password", "MAC"]);
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    refused(&pw, &["keystore.json", "mode 640", "chmod 600"]);
}

#[test]
fn init_testnet_gives_each_validator_its_own_ports_key_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = init_testnet(dir.path(), 4, [30303, 8545, 9100]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let genesis: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("genesis.json")).unwrap())
            .unwrap();
    assert_eq!(genesis["config"]["chainId"], 31337);
    let validators = genesis["kestrel"]["validators"].as_array().unwrap();
    assert_eq!(validators.len(), 4);
    // The Hardhat dev accounts are funded.
    assert!(
        genesis["alloc"]
            .as_object()
            .unwrap()
            .keys()
            .any(|a| a.eq_ignore_ascii_case("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"))
    );

    let mut ports = HashSet::new();
    let mut secrets = HashSet::new();
    for (i, v) in validators.iter().enumerate() {
        let vdir = dir.path().join(format!("validator-{i}"));
        assert_eq!(mode(&vdir), 0o700);
        assert_eq!(mode(&vdir.join("keystore.json")), 0o600);
        assert_eq!(mode(&vdir.join("password.txt")), 0o600);
        let password = std::fs::read_to_string(vdir.join("password.txt")).unwrap();
        assert!(
            !text(&out.stdout).contains(password.trim()),
            "password printed"
        );
        secrets.insert(password);
        let keystore: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(vdir.join("keystore.json")).unwrap())
                .unwrap();
        assert_eq!(keystore["crypto"]["kdfparams"]["n"], 4096, "--scrypt-light");
        assert!(
            v["address"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case(&format!("0x{}", keystore["address"].as_str().unwrap()))
        );
        let config: toml::Table =
            toml::from_str(&std::fs::read_to_string(vdir.join("config.toml")).unwrap()).unwrap();
        assert_eq!(
            config["validator"]["key_file"].as_str(),
            Some("keystore.json")
        );
        assert_eq!(
            config["validator"]["password_file"].as_str(),
            Some("password.txt")
        );
        let p2p: std::net::SocketAddr = v["p2p"].as_str().unwrap().parse().unwrap();
        let metrics: std::net::SocketAddr = config["metrics"]["listen"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let rpc = config["rpc"]["http_port"].as_integer().unwrap() as u16;
        assert!(p2p.ip().is_loopback() && metrics.ip().is_loopback());
        for port in [p2p.port(), rpc, metrics.port()] {
            assert!(ports.insert(port), "port {port} used twice");
        }
    }
    assert_eq!(secrets.len(), 4, "distinct passwords");

    let again = init_testnet(dir.path(), 4, [30303, 8545, 9100]);
    assert!(
        !again.status.success(),
        "an existing testnet is not overwritten"
    );
}

/// A 1-validator testnet runs: the config's genesis and key are used, a flag overrides the file's
/// RPC port, the node answers `eth_chainId`, stops cleanly on SIGTERM, and never logs its password.
#[test]
fn one_validator_testnet_runs_from_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = init_testnet(dir.path(), 1, [free_port(), free_port(), free_port()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let vdir = dir.path().join("validator-0");
    let rpc_port = free_port();
    let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    let mut node = Command::new(BIN)
        .args(["node", "--config"])
        .arg(vdir.join("config.toml"))
        .args(["--http-port", &rpc_port.to_string()])
        .env("RUST_LOG", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();

    let log = dir.path().join("node.log");
    let chain_id = wait_for_answer(&mut node, &log, || eth_chain_id(rpc_port));
    assert_eq!(chain_id, "0x7a69", "chain id 31337 from the genesis");
    assert!(vdir.join("data").is_dir(), "datadir relative to the config");
    // A second process on the running node's datadir is refused before it writes anything.
    let stats = kestrel(&[
        "db",
        "stats",
        "--datadir",
        vdir.join("data").to_str().unwrap(),
    ]);
    assert!(!stats.status.success());
    assert!(
        text(&stats.stderr).contains("is in use: another kestrel process has it open"),
        "{}",
        text(&stats.stderr)
    );
    assert_eq!(
        eth_chain_id(rpc_port).as_deref(),
        Some("0x7a69"),
        "and the node goes on"
    );

    let term = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < NODE_TIMEOUT, "node did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "clean shutdown: {status}");

    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
    let password = std::fs::read_to_string(vdir.join("password.txt")).unwrap();
    assert!(
        !log.contains(password.trim()),
        "the keystore password was logged"
    );
    let genesis = std::fs::read_to_string(dir.path().join("genesis.json")).unwrap();
    let genesis: serde_json::Value = serde_json::from_str(&genesis).unwrap();
    let pubkey = genesis["kestrel"]["validators"][0]["pubkey"]
        .as_str()
        .unwrap();
    assert!(log.contains(pubkey), "the public key is logged: {log}");
}

#[test]
fn a_genesis_validator_must_run_with_its_own_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = init_testnet(dir.path(), 1, [free_port(), free_port(), free_port()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let genesis = dir.path().join("genesis.json");
    let genesis = genesis.to_str().unwrap();
    let out = kestrel(&["node", "--genesis", genesis]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("give its key"),
        "{}",
        text(&out.stderr)
    );

    let (other, pw) = (dir.path().join("other.json"), dir.path().join("pw"));
    password_file(&pw, "pw", 0o600);
    assert!(keygen(&other, &pw, &["--scrypt-light"]).status.success());
    let out = kestrel(&[
        "node",
        "--genesis",
        genesis,
        "--validator-key",
        other.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("give its password file"), "{stderr}");
    let out = kestrel(&[
        "node",
        "--genesis",
        genesis,
        "--validator-key",
        other.to_str().unwrap(),
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not the genesis validator"), "{stderr}");
}

#[test]
fn an_unknown_config_key_is_an_error_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "dev = true\n[rpc]\nhttp_prot = 8545\n").unwrap();
    let out = kestrel(&["node", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("node.toml"), "{stderr}");
    assert!(stderr.contains("unknown field `http_prot`"), "{stderr}");
}

/// A geth genesis file that sets `excessBlobGas`, `mixHash`, `parentBeaconBlockRoot` and the
/// other header fields gives the block 0 geth's rules give: the file is the genesis of the
/// Ethereum test `fib_d0g0v0_Cancun` (ethereum/tests, `VMTests/vmArithmeticTest/fib.json`),
/// whose `genesisBlockHeader.hash` every client agrees on.
#[test]
fn a_geth_genesis_file_gives_geths_block_zero() {
    const FIB_GENESIS_HASH: &str =
        "0x9b8173f24ba010b231a52ec8126edbd8a3534382c0b30276f18f39f791102894";
    let genesis = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/geth_genesis_cancun.json"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let datadir = dir.path().join("data");
    let mut node = spawn_node(
        &[
            "--genesis",
            genesis,
            "--datadir",
            datadir.to_str().unwrap(),
            "--http-port",
            &port.to_string(),
            "--metrics",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &dir.path().join("node.log"),
    );
    let block = wait_for_answer(&mut node, &dir.path().join("node.log"), || {
        rpc(
            port,
            "eth_getBlockByNumber",
            serde_json::json!(["0x0", false]),
        )
    });
    node.kill().unwrap();
    node.wait().unwrap();
    assert_eq!(block["hash"], FIB_GENESIS_HASH, "{block}");
    assert_eq!(block["excessBlobGas"], "0x60000");
    assert_eq!(
        block["mixHash"],
        "0x0000000000000000000000000000000000000000000000000000000000020000"
    );
}
