//! The daemon's backends, one per kind of task, chosen by each task's
//! sandbox kind (its runtime handler's options, its bundle's annotation,
//! or what its process is).

use std::sync::Arc;

use async_trait::async_trait;
use ironcell_oci::Bundle;
use ironcell_sandbox::{Kind, Sandboxes};

use crate::error::Result;
use crate::wasm_host::WasmHost;

use super::backend::{Backends, Host, Place, Spawned, TaskBackend, TaskKind};
use super::native::NativeBackends;
use super::vm::VmBackends;
use super::wasm::WasmBackends;
use super::IoSpec;

/// Every kind of task ironcelld runs.
pub struct ByKind {
    native: NativeBackends,
    vm: VmBackends,
    wasm: WasmBackends,
}

impl ByKind {
    pub fn new(host: Arc<Host>) -> ByKind {
        let wasm = Arc::new(WasmHost::new(host.root.join("wasm-cache")));
        ByKind {
            native: NativeBackends { host: host.clone() },
            vm: VmBackends { host: host.clone() },
            wasm: WasmBackends { host, wasm },
        }
    }
}

#[async_trait]
impl Backends for ByKind {
    async fn create(
        &self,
        place: &Place,
        bundle: &Bundle,
        io: &IoSpec,
        sandbox: Option<Kind>,
    ) -> Result<(Box<dyn TaskBackend>, Spawned)> {
        match Sandboxes::select(sandbox, bundle)? {
            Kind::Wasm => self.wasm.create(place, bundle, io, sandbox).await,
            Kind::Vm => self.vm.create(place, bundle, io, sandbox).await,
            Kind::Namespace | Kind::AppKernel => {
                self.native.create(place, bundle, io, sandbox).await
            }
        }
    }

    async fn discard(&self, place: &Place) -> Result<()> {
        // Which kind it was is not known (the bundle may be gone): every
        // kind that leaves something outside the task's directory cleans.
        self.wasm.discard(place).await?;
        self.native.discard(place).await
    }

    fn recover(&self, kind: TaskKind, place: &Place) -> Result<Box<dyn TaskBackend>> {
        match kind {
            TaskKind::Native => self.native.recover(kind, place),
            TaskKind::Vm => self.vm.recover(kind, place),
            TaskKind::Wasm => self.wasm.recover(kind, place),
            #[cfg(test)]
            TaskKind::Test => Err(crate::error::TaskError::Internal(
                "a test task's record".into(),
            )),
        }
    }
}
