//! Target `rpc_params`: JSON-RPC requests through the real method table (`kestrel_rpc::methods`)
//! over a real MDBX store holding the dev genesis, created once per process in a temp dir, with
//! the real ingress stage behind `eth_sendRawTransaction`. The HTTP server in front (body and
//! connection limits) is not part of this target.

use kestrel_pipeline::mempool::{IngressStage, TxPool, Validator};
use kestrel_pipeline::{state::LatestState, status::ChainStatus};
use kestrel_rpc::{RpcContext, RpcLimits};
use kestrel_storage::{Overlay, Store};
use kestrel_types::ChainSpec;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

struct Harness {
    runtime: tokio::runtime::Runtime,
    module: jsonrpsee::RpcModule<()>,
    names: Vec<&'static str>,
    _datadir: tempfile::TempDir,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let datadir = tempfile::tempdir().expect("temp dir");
    let spec = Arc::new(ChainSpec::dev());
    let store = Arc::new(Store::open(datadir.path()).expect("open store"));
    store.init_genesis(&spec).expect("write genesis");
    let status = Arc::new(ChainStatus::default());
    ChainStatus::set(&status.next_base_fee, 1_000_000_000);
    let pool = Arc::new(TxPool::new());
    let state = LatestState {
        store: store.clone(),
        overlay: Arc::new(Overlay::default()),
    };
    let (ingress, _threads) = IngressStage {
        pool: pool.clone(),
        validator: Validator::new(spec.clone(), spec.gas_limit),
        state,
        status: status.clone(),
    }
    .spawn(1);
    let ctx = RpcContext {
        store,
        spec,
        pool,
        ingress,
        status,
    };
    // Short execution limits: a looping `eth_call` is the RPC limits' business, not this target's.
    let limits = RpcLimits {
        call_timeout: Duration::from_millis(50),
        batch_execution_budget: Duration::from_millis(50),
        ..RpcLimits::default()
    };
    let module = kestrel_rpc::methods(ctx, &limits).expect("register methods");
    let mut names: Vec<&'static str> = module.method_names().collect();
    names.sort_unstable();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    Harness {
        runtime,
        module,
        names,
        _datadir: datadir,
    }
});

/// The first byte picks a method and the rest is its `params` JSON, or (from 0xf0) the rest is
/// a whole request. Every request gets one JSON-RPC response: a result or an error object.
pub fn request(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let h = &*HARNESS;
    let request = if which >= 0xf0 {
        rest.to_owned()
    } else {
        let method = h.names[usize::from(which) % h.names.len()];
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{rest}}}"#)
    };
    let Ok((response, _)) = h.runtime.block_on(h.module.raw_json_request(&request, 1)) else {
        return; // not a JSON-RPC request object: the server answers a parse error itself
    };
    let response: serde_json::Value =
        serde_json::from_str(response.get()).expect("the response is JSON");
    let error = response.get("error");
    assert!(
        response.get("result").is_some() != error.is_some(),
        "a response has a result or an error: {response}"
    );
    if let Some(code) = error.and_then(|e| e.get("code")).and_then(|c| c.as_i64()) {
        // Bad parameters are the caller's error (-32602, -32000, ...); an internal error means the
        // node failed at something a request made it do.
        assert_ne!(code, -32603, "internal error for {request}: {response}");
    }
}
