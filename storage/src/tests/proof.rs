//! `Reader::proof` against alloy-trie's proof verifier: for random states (the state root
//! test's blocks), every account of the pools, present or not, and every slot of the pools has
//! a proof that verifies against the state root from scratch, with the value the store reads.

use super::{
    model::{Model, Pools, random_block},
    temp_store,
};
use crate::StateView;
use alloy_primitives::{B256, U256, keccak256};
use alloy_trie::{Nibbles, TrieAccount, proof::verify_proof};
use rand::{SeedableRng, rngs::StdRng};

#[test]
fn proofs_verify_against_the_state_root() {
    for seed in 0..24u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let pools = Pools::new(&mut rng, 40, 24);
        let (_dir, store) = temp_store();
        let mut model = Model::default();
        for _ in 0..12 {
            let changes = random_block(&mut rng, &pools, &model, 40);
            let mut writer = store.begin_block().unwrap();
            writer.apply_state(&changes).unwrap();
            writer.commit().unwrap();
            model.apply(&changes);
        }
        let slots: Vec<B256> = pools
            .slots
            .iter()
            .map(|s| B256::from(s.to_be_bytes::<32>()))
            .collect();
        store
            .view(|reader| {
                let root = reader.state_root_from_scratch().unwrap();
                for address in &pools.addresses {
                    let (proved_root, proof) = reader.proof(*address, &slots).unwrap();
                    assert_eq!(proved_root, root, "seed {seed}");
                    assert_eq!(proof.info, reader.account(*address).unwrap(), "seed {seed}");
                    let leaf = proof.info.map(|info| {
                        let account = TrieAccount::new(
                            info.nonce,
                            info.balance,
                            proof.storage_root,
                            info.code_hash,
                        );
                        alloy_rlp::encode(account)
                    });
                    let key = Nibbles::unpack(keccak256(address));
                    verify_proof(root, key, leaf, &proof.proof)
                        .unwrap_or_else(|e| panic!("seed {seed}: account {address}: {e}"));
                    for slot in &proof.storage {
                        let value = reader
                            .storage(*address, U256::from_be_bytes(slot.slot.0))
                            .unwrap();
                        assert_eq!(slot.value, value);
                        if proof.info.is_none() {
                            assert!(slot.proof.is_empty());
                            continue;
                        }
                        let leaf = (!value.is_zero()).then(|| alloy_rlp::encode(value));
                        verify_proof(
                            proof.storage_root,
                            Nibbles::unpack(keccak256(slot.slot)),
                            leaf,
                            &slot.proof,
                        )
                        .unwrap_or_else(|e| {
                            panic!("seed {seed}: slot {} of {address}: {e}", slot.slot)
                        });
                    }
                }
            })
            .unwrap();
    }
}
