//! `eth_createAccessList`: the addresses and slots a call touches, and the gas it then uses.

use crate::{
    call::{
        CallContext, DeadlineInspector, call_env, capped, halt_message, run_error, state_db, tx_env,
    },
    error::RpcError,
};
use alloy_evm::{Evm, EvmFactory, eth::EthEvmFactory};
use alloy_primitives::U256;
use alloy_rpc_types_eth::{AccessListResult, TransactionRequest};
use revm::context::result::ExecutionResult;
use revm_inspectors::access_list::AccessListInspector;

/// `eth_createAccessList` as reth answers it: a run that records every address and slot the
/// call touches (revm-inspectors' `AccessListInspector`, which leaves out the sender, the
/// recipient and the precompiles, as geth does), then a run with that list for the gas it uses.
/// A call that reverts or halts still gets its list, with the error beside it.
pub(crate) fn create_access_list(
    ctx: &CallContext<'_>,
    request: TransactionRequest,
) -> Result<AccessListResult, RpcError> {
    let env = call_env(ctx);
    let mut request = capped(request);
    let initial = request.access_list.clone().unwrap_or_default();
    let tx = tx_env(request.clone(), &env)?;
    let caller = tx.caller;
    let mut db = state_db(ctx.state, ctx.hashes);
    let inspector = (
        AccessListInspector::new(initial),
        DeadlineInspector::new(ctx.deadline),
    );
    let mut evm =
        EthEvmFactory::default().create_evm_with_inspector(&mut db, env.clone(), inspector);
    let first = evm.transact(tx).map_err(|e| run_error(e, caller));
    let first = evm.inspector().1.outcome(first)?;
    let access_list = std::mem::take(&mut evm.inspector_mut().0).into_access_list();
    // Converted again, not patched: a request without fee fields is a legacy transaction, whose
    // access list revm would ignore; with a list it becomes an EIP-2930 one, as it would be sent.
    request.access_list = Some(access_list.clone());
    let second = evm
        .transact(tx_env(request, &env)?)
        .map_err(|e| run_error(e, caller));
    let second = evm.inspector().1.outcome(second)?;
    Ok(AccessListResult {
        access_list,
        gas_used: U256::from(second.result.tx_gas_used()),
        error: failure(&first.result).or_else(|| failure(&second.result)),
    })
}

/// geth's words for a run that did not succeed.
fn failure(result: &ExecutionResult) -> Option<String> {
    match result {
        ExecutionResult::Success { .. } => None,
        ExecutionResult::Revert { output, .. } => {
            Some(RpcError::Reverted(output.clone()).to_string())
        }
        ExecutionResult::Halt { reason, .. } => Some(halt_message(reason)),
    }
}
