//! The server over HTTP against a real store holding the dev genesis: JSON-RPC envelopes (errors,
//! batches), and the methods that need no blocks beyond genesis.

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Address, B256, TxKind, U256, hex};
use kestrel_rpc::{RpcConfig, RpcContext, RpcLimits};
use kestrel_storage::Store;
use kestrel_types::{ChainSpec, chain::dev_accounts};
use serde_json::{Value, json};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
};

struct Node {
    addr: SocketAddr,
    _server: jsonrpsee::server::ServerHandle,
    _dir: tempfile::TempDir,
}

async fn start() -> Node {
    start_with(RpcLimits::default()).await
}

async fn start_with(limits: RpcLimits) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let spec = Arc::new(ChainSpec::dev());
    let store = Arc::new(Store::open(dir.path()).unwrap());
    store.init_genesis(&spec).unwrap();
    let (ctx, _ingress) = RpcContext::standalone(store, spec);
    let config = RpcConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        limits,
        ..RpcConfig::default()
    };
    let (addr, server) = kestrel_rpc::start(config, ctx).await.unwrap();
    Node {
        addr,
        _server: server,
        _dir: dir,
    }
}

/// POSTs `body` as JSON and returns the parsed response body.
async fn post(addr: SocketAddr, body: String) -> Value {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    })
    .await
    .unwrap()
}

async fn rpc(node: &Node, method: &str, params: Value) -> Value {
    post(
        node.addr,
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string(),
    )
    .await
}

async fn result(node: &Node, method: &str, params: Value) -> Value {
    let out = rpc(node, method, params).await;
    assert!(out.get("error").is_none(), "{method}: {out}");
    out["result"].clone()
}

fn error(out: &Value) -> (i64, String) {
    (
        out["error"]["code"].as_i64().unwrap(),
        out["error"]["message"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basics_at_genesis() {
    let node = start().await;
    let alice = dev_accounts()[0].0;
    assert_eq!(result(&node, "eth_chainId", json!([])).await, "0x539");
    assert_eq!(result(&node, "net_version", json!([])).await, "1337");
    assert_eq!(result(&node, "eth_blockNumber", json!([])).await, "0x0");
    assert_eq!(result(&node, "eth_syncing", json!([])).await, false);
    assert_eq!(result(&node, "eth_accounts", json!([])).await, json!([]));
    assert!(
        result(&node, "web3_clientVersion", json!([]))
            .await
            .as_str()
            .unwrap()
            .starts_with("kestrel/v")
    );

    let ten_thousand_eth = U256::from(10_000u64) * U256::from(10u64).pow(U256::from(18));
    assert_eq!(
        result(&node, "eth_getBalance", json!([alice, "latest"])).await,
        json!(ten_thousand_eth)
    );
    assert_eq!(
        result(&node, "eth_getBalance", json!([alice])).await,
        json!(ten_thousand_eth)
    );
    assert_eq!(
        result(&node, "eth_getTransactionCount", json!([alice, "pending"])).await,
        "0x0"
    );
    assert_eq!(
        result(&node, "eth_getCode", json!([alice, "latest"])).await,
        "0x"
    );
    assert_eq!(
        result(&node, "eth_getStorageAt", json!([alice, "0x0", "latest"])).await,
        json!(B256::ZERO)
    );
    let out = rpc(&node, "eth_getBalance", json!([alice, "0x5"])).await;
    assert_eq!(error(&out), (-32000, "header not found".into()));

    let genesis = result(&node, "eth_getBlockByNumber", json!(["0x0", false])).await;
    assert_eq!(genesis["number"], "0x0");
    assert_eq!(genesis["baseFeePerGas"], "0x3b9aca00");
    assert_eq!(genesis["transactions"], json!([]));
    let by_hash = result(&node, "eth_getBlockByHash", json!([genesis["hash"], true])).await;
    assert_eq!(by_hash["hash"], genesis["hash"]);
    assert_eq!(
        result(&node, "eth_getBlockByNumber", json!(["0x1", false])).await,
        Value::Null
    );
    assert_eq!(
        result(
            &node,
            "eth_getBlockTransactionCountByNumber",
            json!(["latest"])
        )
        .await,
        "0x0"
    );
    assert_eq!(
        result(&node, "eth_getBlockReceipts", json!(["latest"])).await,
        json!([])
    );
    assert_eq!(
        result(&node, "eth_getLogs", json!([{"fromBlock": "earliest"}])).await,
        json!([])
    );

    // 1 gwei genesis base fee + 1 gwei tip.
    assert_eq!(result(&node, "eth_gasPrice", json!([])).await, "0x77359400");
    assert_eq!(
        result(&node, "eth_maxPriorityFeePerGas", json!([])).await,
        "0x3b9aca00"
    );
    // web3.py sends the block count as a JSON number, viem as a hex string.
    for count in [json!(1), json!("0x1")] {
        let history = result(&node, "eth_feeHistory", json!([count, "latest", [25, 75]])).await;
        assert_eq!(history["oldestBlock"], "0x0");
        assert_eq!(
            history["baseFeePerGas"],
            json!(["0x3b9aca00", "0x3b9aca00"])
        );
        assert_eq!(history["reward"], json!([["0x0", "0x0"]]));
    }

    let transfer = json!({"from": alice, "to": Address::repeat_byte(1), "value": "0x1"});
    assert_eq!(
        result(&node, "eth_estimateGas", json!([transfer])).await,
        "0x5208"
    );
    assert_eq!(
        result(&node, "eth_call", json!([transfer, "latest"])).await,
        "0x"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_transactions_reach_the_pool() {
    let node = start().await;
    let (alice, _) = dev_accounts()[0];
    let (raw, hash) = alice_transfer(0);

    assert_eq!(
        result(&node, "eth_sendRawTransaction", json!([raw])).await,
        hash
    );
    let out = rpc(&node, "eth_sendRawTransaction", json!([raw])).await;
    assert_eq!(error(&out), (-32000, "already known".into()));

    let pending = result(&node, "eth_getTransactionByHash", json!([hash])).await;
    assert_eq!(pending["hash"], hash);
    assert_eq!(pending["from"], json!(alice));
    assert_eq!(pending["blockHash"], Value::Null);
    assert_eq!(
        result(&node, "eth_getTransactionReceipt", json!([hash])).await,
        Value::Null
    );
    assert_eq!(
        result(&node, "eth_getTransactionCount", json!([alice, "pending"])).await,
        "0x1"
    );
    assert_eq!(
        result(&node, "eth_getTransactionCount", json!([alice, "latest"])).await,
        "0x0"
    );

    let out = rpc(&node, "eth_sendRawTransaction", json!(["0xdeadbeef"])).await;
    assert_eq!(out["error"]["code"], -32000, "{out}");
}

/// Alice's transfer with `nonce`, signed, as `eth_sendRawTransaction` takes it, and its hash.
fn alice_transfer(nonce: u64) -> (String, Value) {
    let (_, key) = dev_accounts()[0];
    let tx = TxEip1559 {
        chain_id: 1337,
        nonce,
        gas_limit: 21_000,
        max_fee_per_gas: 10_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to: TxKind::Call(Address::repeat_byte(1)),
        value: U256::from(1),
        ..TxEip1559::default()
    };
    let signature =
        alloy_consensus::crypto::secp256k1::sign_message(key, tx.signature_hash()).unwrap();
    let signed = TxEnvelope::Eip1559(tx.into_signed(signature));
    (
        format!("0x{}", hex::encode(signed.encoded_2718())),
        json!(signed.tx_hash()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_raw_transactions_is_answered_call_by_call() {
    let node = start().await;
    let (first, first_hash) = alice_transfer(0);
    let (second, second_hash) = alice_transfer(1);
    let call = |id: Value, params: Value| json!({"jsonrpc": "2.0", "id": id, "method": "eth_sendRawTransaction", "params": params});
    let batch = json!([
        call(json!(1), json!([first])),
        {"jsonrpc": "2.0", "id": 2, "method": "eth_chainId", "params": []},
        call(json!("three"), json!([second])),
        call(json!(4), json!([first])),
        call(json!(5), json!(["0xdeadbeef"])),
        call(json!(6), json!([first, "extra"])),
        call(json!(7), json!([])),
        call(json!(8), json!(["not hex"])),
        {"jsonrpc": "2.0", "method": "eth_sendRawTransaction", "params": [second]},
    ]);
    // Every call answered once, the notification not at all.
    let out = batch_answers(&node, batch, 8).await;
    let by_id = |id: Value| answer_to(&out, id);
    assert_eq!(by_id(json!(1))["result"], first_hash);
    assert_eq!(by_id(json!(2))["result"], "0x539");
    assert_eq!(by_id(json!("three"))["result"], second_hash);
    // Answered as each would be alone.
    let alone = |params: Value| rpc(&node, "eth_sendRawTransaction", params);
    for (id, params) in [
        (4, json!([first])),
        (5, json!(["0xdeadbeef"])),
        (6, json!([first, "extra"])),
        (7, json!([])),
        (8, json!(["not hex"])),
    ] {
        let batched = by_id(json!(id));
        assert!(batched.get("error").is_some(), "{id}: {batched}");
        assert_eq!(batched["error"], alone(params).await["error"], "{id}");
    }
    assert_eq!(error(&by_id(json!(4))), (-32000, "already known".into()));
    assert_eq!(
        result(
            &node,
            "eth_getTransactionCount",
            json!([dev_accounts()[0].0, "pending"])
        )
        .await,
        "0x2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_rpc_envelopes_are_geths() {
    let node = start().await;
    let out = rpc(&node, "eth_noSuchThing", json!([])).await;
    assert_eq!(out["id"], 1);
    assert_eq!(
        error(&out),
        (
            -32601,
            "the method eth_noSuchThing does not exist/is not available".into()
        )
    );

    let out = post(node.addr, r#"{"jsonrpc":"2.0","id":1,"method":"#.into()).await;
    assert_eq!(out["error"]["code"], -32700, "{out}");
    assert_eq!(out["id"], Value::Null);

    let out = rpc(&node, "eth_getBalance", json!(["not-an-address", "latest"])).await;
    assert_eq!(out["error"]["code"], -32602, "{out}");
    let out = post(node.addr, r#"{"jsonrpc":"2.0","id":5,"params":[]}"#.into()).await;
    assert_eq!(out["error"]["code"], -32600, "{out}");

    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "id": "two", "method": "net_version", "params": []},
        {"jsonrpc": "2.0", "id": 3, "method": "no_suchMethod", "params": []},
        {"jsonrpc": "2.0", "id": 4, "method": "eth_getBalance", "params": ["0x12"]},
        {"jsonrpc": "2.0", "id": 5},
        {"jsonrpc": "2.0", "method": "eth_chainId", "params": []},
    ]);
    // The notification (no id) gets no answer.
    let out = batch_answers(&node, batch, 5).await;
    let by_id = |id: Value| answer_to(&out, id);
    assert_eq!(by_id(json!(1))["result"], "0x539");
    assert_eq!(by_id(json!("two"))["result"], "1337");
    assert_eq!(by_id(json!(3))["error"]["code"], -32601);
    assert_eq!(by_id(json!(4))["error"]["code"], -32602);
    assert_eq!(by_id(json!(5))["error"]["code"], -32600);

    let out = post(node.addr, "[]".into()).await;
    assert_eq!(out["error"]["code"], -32600, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_the_ip_rate_are_refused_each_with_an_error() {
    let node = start_with(RpcLimits {
        calls_per_s_per_ip: 5,
        ..RpcLimits::default()
    })
    .await;
    let batch: Vec<Value> = (0..8)
        .map(|id| json!({"jsonrpc": "2.0", "id": id, "method": "eth_chainId", "params": []}))
        .collect();
    let refused = refusals(&node, batch).await;
    // A burst of one second's worth, then nothing until the bucket refills.
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert_eq!(
        error(&refused[0]),
        (
            -32005,
            "rate limit exceeded: at most 5 calls per second per IP address".into()
        )
    );
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    let out = rpc(&node, "eth_chainId", json!([])).await;
    assert_eq!(out["result"], "0x539", "refilled: {out}");

    // Raw transactions of a batch count against the rate one by one too.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let batch: Vec<Value> = (0..8)
        .map(|nonce| {
            let (raw, _) = alice_transfer(nonce);
            json!({"jsonrpc": "2.0", "id": nonce, "method": "eth_sendRawTransaction", "params": [raw]})
        })
        .collect();
    let refused = refusals(&node, batch).await;
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused.iter().all(|a| error(a).0 == -32005), "{refused:?}");
}

/// Posts `batch` and returns its answers, checking there are `answers` of them.
async fn batch_answers(node: &Node, batch: Value, answers: usize) -> Vec<Value> {
    let out = post(node.addr, batch.to_string()).await;
    let out = out
        .as_array()
        .unwrap_or_else(|| panic!("not a batch response: {out}"))
        .clone();
    assert_eq!(out.len(), answers, "{out:?}");
    out
}

/// The one answer to the call with `id`.
fn answer_to(answers: &[Value], id: Value) -> Value {
    let found: Vec<_> = answers.iter().filter(|a| a["id"] == id).collect();
    assert_eq!(found.len(), 1, "{id}: {answers:?}");
    found[0].clone()
}

/// Posts `batch`, checks that each call was answered, and returns the answers that are errors.
async fn refusals(node: &Node, batch: Vec<Value>) -> Vec<Value> {
    let calls = batch.len();
    batch_answers(node, Value::Array(batch), calls)
        .await
        .into_iter()
        .filter(|a| a.get("error").is_some())
        .collect()
}
