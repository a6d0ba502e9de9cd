//! The latest state: executed-but-uncommitted blocks (the overlay) over the database.

use kestrel_storage::{Overlay, OverlayView, StateView, StorageError, Store};
use std::sync::Arc;

#[derive(Clone)]
pub struct LatestState {
    pub store: Arc<Store>,
    pub overlay: Arc<Overlay>,
}

impl LatestState {
    /// Runs `f` over one consistent view. The overlay snapshot is taken before the database
    /// snapshot, so a block that left the overlay is already in the database.
    pub fn with_view<R>(&self, f: impl FnOnce(&dyn StateView) -> R) -> Result<R, StorageError> {
        let layers = self.overlay.snapshot();
        self.store.view(|reader| {
            f(&OverlayView {
                layers: &layers,
                base: reader,
            })
        })
    }
}
