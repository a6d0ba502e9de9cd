//! The node's TOML config file (`kestrel node --config FILE`).
//!
//! Every `kestrel node` flag has a key here; docs/CONFIG.md lists them, and a test keeps the two in
//! step. A flag given on the command line wins over the file, the file over the built-in default.
//! Unknown keys are errors, so a misspelt option cannot be silently ignored.

use crate::cli::{ArchiveIo, ExecutorKind, NodeArgs, SyncMode};
use alloy_primitives::Address;
use kestrel_storage::HistoryWindow;
use serde::{Deserialize, Serialize};
use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroUsize,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config file {path}: `dev = true` and `genesis` exclude each other")]
    DevAndGenesis { path: PathBuf },
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub role: Option<Role>,
    pub sync: Option<SyncMode>,
    pub sync_state_distance: Option<u64>,
    pub dev: Option<bool>,
    pub genesis: Option<PathBuf>,
    pub datadir: Option<PathBuf>,
    pub min_free_disk_mb: Option<u64>,
    pub history_blocks: Option<HistoryBlocks>,
    pub rpc: RpcSection,
    pub metrics: MetricsSection,
    pub ordering: OrderingSection,
    pub execution: ExecutionSection,
    pub mempool: MempoolSection,
    pub validator: ValidatorSection,
    pub p2p: P2pSection,
    pub archive: ArchiveSection,
}

/// `role`: what the node is in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A member of the genesis validator set (`[validator] key_file`).
    Validator,
    /// Follows the validators without a validator key (`kestrel node --full`).
    Full,
}

/// `history_blocks`: a number of blocks, or `"all"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HistoryBlocks {
    Blocks(u64),
    All(AllBlocks),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllBlocks {
    All,
}

impl From<HistoryBlocks> for HistoryWindow {
    fn from(value: HistoryBlocks) -> Self {
        match value {
            HistoryBlocks::Blocks(n) => Self::Blocks(n),
            HistoryBlocks::All(AllBlocks::All) => Self::All,
        }
    }
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcSection {
    pub http_addr: Option<IpAddr>,
    pub http_port: Option<u16>,
    pub connections_max: Option<u32>,
    pub connections_per_ip: Option<u32>,
    pub header_timeout_ms: Option<u64>,
    pub body_timeout_ms: Option<u64>,
    pub body_budget_bytes: Option<u64>,
    pub body_budget_per_ip_bytes: Option<u64>,
    pub ip_calls_per_s: Option<u32>,
    pub call_timeout_ms: Option<u64>,
    pub batch_timeout_ms: Option<u64>,
    pub executions_max: Option<usize>,
    pub executions_per_ip: Option<usize>,
    pub db_readers_max: Option<usize>,
    pub ws_port: Option<u16>,
    pub ws_connections_max: Option<u32>,
    pub ws_subscriptions_max: Option<u32>,
    pub ws_buffer_messages: Option<u32>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrderingSection {
    pub block_time_ms: Option<u64>,
    pub gas_limit: Option<u64>,
    pub execution_delay: Option<u64>,
    pub beneficiary: Option<Address>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutionSection {
    pub executor: Option<ExecutorKind>,
    pub exec_threads: Option<NonZeroUsize>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MempoolSection {
    pub ingress_threads: Option<usize>,
    pub txs_max: Option<usize>,
    pub sender_txs_max: Option<usize>,
    pub queued_lifetime_s: Option<u64>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidatorSection {
    pub key_file: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pSection {
    pub listen: Option<SocketAddr>,
    pub peers: Option<Vec<SocketAddr>>,
    pub preauth_max: Option<usize>,
    pub preauth_per_ip: Option<usize>,
    pub handshake_timeout_ms: Option<u64>,
    pub full_nodes_max: Option<usize>,
    pub full_node_frame_max_bytes: Option<u32>,
    pub full_node_requests_per_s: Option<u32>,
    pub full_node_tx_bytes_per_s: Option<u32>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveSection {
    pub io: Option<ArchiveIo>,
}

impl Config {
    /// Reads a config file. Relative paths in it are taken from the file's directory, so a
    /// validator directory can be moved, or started from any working directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        if config.dev == Some(true) && config.genesis.is_some() {
            return Err(ConfigError::DevAndGenesis {
                path: path.to_owned(),
            });
        }
        let base = path.parent().unwrap_or(Path::new(""));
        for p in [
            &mut config.genesis,
            &mut config.datadir,
            &mut config.validator.key_file,
            &mut config.validator.password_file,
        ]
        .into_iter()
        .flatten()
        {
            *p = base.join(&*p);
        }
        Ok(config)
    }

    /// Sets each option of `args` that the file gives, unless `from_cli(flag id)` says the
    /// command line gave it.
    pub fn apply(self, args: &mut NodeArgs, from_cli: impl Fn(&str) -> bool) {
        macro_rules! fill {
            ($field:ident, $value:expr) => {
                if let Some(value) = $value {
                    if !from_cli(stringify!($field)) {
                        args.$field = value;
                    }
                }
            };
        }
        // `--dev` and `--genesis` choose the chain together: either on the command line replaces
        // the file's choice.
        if !from_cli("dev") && !from_cli("genesis") {
            fill!(dev, self.dev);
            fill!(genesis, self.genesis.map(Some));
        }
        fill!(full, self.role.map(|role| role == Role::Full));
        fill!(sync, self.sync);
        fill!(sync_state_distance, self.sync_state_distance);
        fill!(datadir, self.datadir);
        fill!(min_free_disk_mb, self.min_free_disk_mb);
        fill!(history_blocks, self.history_blocks.map(HistoryWindow::from));
        fill!(http_addr, self.rpc.http_addr);
        fill!(http_port, self.rpc.http_port);
        fill!(rpc_connections_max, self.rpc.connections_max);
        fill!(rpc_connections_per_ip, self.rpc.connections_per_ip);
        fill!(rpc_header_timeout_ms, self.rpc.header_timeout_ms);
        fill!(rpc_body_timeout_ms, self.rpc.body_timeout_ms);
        fill!(rpc_body_budget_bytes, self.rpc.body_budget_bytes);
        fill!(
            rpc_body_budget_per_ip_bytes,
            self.rpc.body_budget_per_ip_bytes
        );
        fill!(rpc_ip_calls_per_s, self.rpc.ip_calls_per_s);
        fill!(rpc_call_timeout_ms, self.rpc.call_timeout_ms);
        fill!(rpc_batch_timeout_ms, self.rpc.batch_timeout_ms);
        fill!(rpc_executions_max, self.rpc.executions_max);
        fill!(rpc_executions_per_ip, self.rpc.executions_per_ip);
        fill!(rpc_db_readers_max, self.rpc.db_readers_max);
        fill!(ws_port, self.rpc.ws_port.map(Some));
        fill!(ws_connections_max, self.rpc.ws_connections_max);
        fill!(ws_subscriptions_max, self.rpc.ws_subscriptions_max);
        fill!(ws_buffer_messages, self.rpc.ws_buffer_messages);
        fill!(metrics, self.metrics.listen);
        fill!(block_time_ms, self.ordering.block_time_ms);
        fill!(gas_limit, self.ordering.gas_limit.map(Some));
        fill!(execution_delay, self.ordering.execution_delay);
        fill!(beneficiary, self.ordering.beneficiary.map(Some));
        fill!(executor, self.execution.executor);
        fill!(exec_threads, self.execution.exec_threads);
        fill!(ingress_threads, self.mempool.ingress_threads);
        fill!(txpool_txs_max, self.mempool.txs_max);
        fill!(txpool_sender_txs_max, self.mempool.sender_txs_max);
        fill!(txpool_queued_lifetime_s, self.mempool.queued_lifetime_s);
        fill!(validator_key, self.validator.key_file.map(Some));
        fill!(password_file, self.validator.password_file.map(Some));
        fill!(p2p_listen, self.p2p.listen.map(Some));
        fill!(p2p_peers, self.p2p.peers);
        fill!(p2p_preauth_max, self.p2p.preauth_max);
        fill!(p2p_preauth_per_ip, self.p2p.preauth_per_ip);
        fill!(p2p_handshake_timeout_ms, self.p2p.handshake_timeout_ms);
        fill!(p2p_full_nodes_max, self.p2p.full_nodes_max);
        fill!(
            p2p_full_node_frame_max_bytes,
            self.p2p.full_node_frame_max_bytes
        );
        fill!(
            p2p_full_node_requests_per_s,
            self.p2p.full_node_requests_per_s
        );
        fill!(
            p2p_full_node_tx_bytes_per_s,
            self.p2p.full_node_tx_bytes_per_s
        );
        fill!(archive_io, self.archive.io);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::{CommandFactory, Parser};
    use std::collections::BTreeSet;

    fn node_args(argv: &[&str]) -> NodeArgs {
        let cli = Cli::parse_from([&["kestrel", "node"][..], argv].concat());
        let Command::Node(args) = cli.command else {
            panic!("not the node subcommand");
        };
        *args
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn file_values_fill_what_the_command_line_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            r#"
            genesis = "../genesis.json"
            datadir = "/var/lib/kestrel"
            [rpc]
            http_port = 9000
            [execution]
            executor = "parallel"
            [validator]
            key_file = "keystore.json"
            password_file = "/run/credentials/kestrel.service/password"
            [p2p]
            peers = ["10.0.0.2:30303", "10.0.0.3:30303"]
            "#,
        );
        let mut args = node_args(&["--http-port", "9999"]);
        Config::load(&path)
            .unwrap()
            .apply(&mut args, |id| id == "http_port");
        assert_eq!(args.http_port, 9999, "the flag wins");
        assert_eq!(args.genesis, Some(dir.path().join("../genesis.json")));
        assert_eq!(args.datadir, PathBuf::from("/var/lib/kestrel"));
        assert_eq!(args.executor, ExecutorKind::Parallel);
        assert_eq!(args.validator_key, Some(dir.path().join("keystore.json")));
        assert_eq!(
            args.password_file,
            Some(PathBuf::from("/run/credentials/kestrel.service/password")),
            "absolute paths stay"
        );
        assert_eq!(args.p2p_peers.len(), 2);
        assert_eq!(args.block_time_ms, 500, "unset in the file: the default");
    }

    #[test]
    fn dev_on_the_command_line_replaces_the_files_genesis() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "genesis = \"g.json\"\n");
        let mut args = node_args(&["--dev"]);
        Config::load(&path)
            .unwrap()
            .apply(&mut args, |id| id == "dev");
        assert!(args.dev);
        assert_eq!(args.genesis, None);
        let path = write(dir.path(), "dev = true\ngenesis = \"g.json\"\n");
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::DevAndGenesis { .. })
        ));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "[rpc]\nhttp_port = 8545\nhttp_prot = 1\n");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("config.toml"), "{err}");
        assert!(err.contains("unknown field `http_prot`"), "{err}");
        let path = write(dir.path(), "[execution]\nexecutor = \"fast\"\n");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("executor") && err.contains("fast"), "{err}");
    }

    /// The options docs/CONFIG.md lists: the first column of its tables, `key` or
    /// `[section] key`, with the default column when it holds a TOML value in backticks.
    fn documented_options() -> Vec<(String, Option<String>)> {
        let doc = include_str!("../../docs/CONFIG.md");
        doc.lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let key = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                let key = match key.strip_prefix('[') {
                    Some(rest) => {
                        let (section, key) = rest.split_once("] ")?;
                        format!("{section}.{key}")
                    }
                    None => key.to_owned(),
                };
                let default = cells
                    .get(3)
                    .and_then(|d| d.strip_prefix('`')?.strip_suffix('`'))
                    .map(str::to_owned);
                Some((key, default))
            })
            .collect()
    }

    #[test]
    fn config_md_documents_every_option_and_its_defaults_parse() {
        // Every field, found by serializing the empty config to JSON, where `None` is `null`.
        let mut fields = BTreeSet::new();
        let serde_json::Value::Object(top) = serde_json::to_value(Config::default()).unwrap()
        else {
            unreachable!()
        };
        for (key, value) in top {
            match value {
                serde_json::Value::Object(section) => {
                    fields.extend(section.keys().map(|k| format!("{key}.{k}")))
                }
                _ => {
                    fields.insert(key);
                }
            }
        }
        let documented = documented_options();
        let keys: BTreeSet<String> = documented.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, fields, "docs/CONFIG.md and Config disagree");

        // A file setting every documented default parses, so each default is a valid value.
        let mut tables = std::collections::BTreeMap::<&str, String>::new();
        for (key, default) in &documented {
            let Some(default) = default else { continue };
            let (section, key) = key.split_once('.').unwrap_or(("", key));
            tables
                .entry(section)
                .or_default()
                .push_str(&format!("{key} = {default}\n"));
        }
        // The top level ("") sorts first, before any `[section]` header.
        let text: String = tables
            .iter()
            .map(|(section, body)| match *section {
                "" => body.clone(),
                _ => format!("[{section}]\n{body}"),
            })
            .collect();
        let config: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        // The documented defaults are the command line's.
        let mut args = node_args(&[]);
        let defaults = format!("{args:?}");
        let node = Cli::command();
        let node = node.find_subcommand("node").unwrap();
        config.apply(&mut args, |id| {
            assert!(node.get_arguments().any(|a| a.get_id() == id), "{id}");
            false
        });
        assert_eq!(format!("{args:?}"), defaults);
    }
}
