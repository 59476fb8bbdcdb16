//! The namespace sandbox: a runc-style container on the host.

use ironcell_container::stats::Stats;
use ironcell_container::{CreateOptions, Engine, ExecOptions};
use ironcell_oci::{Bundle, ContainerState};
use oci_spec::runtime::LinuxResources;

use crate::{Kind, Result, Sandbox};

pub struct NamespaceSandbox {
    engine: Engine,
}

impl NamespaceSandbox {
    pub fn new(engine: Engine) -> Self {
        NamespaceSandbox { engine }
    }
}

impl Sandbox for NamespaceSandbox {
    fn kind(&self) -> Kind {
        Kind::Namespace
    }

    fn owns(&self, id: &str) -> bool {
        self.engine.exists(id)
    }

    fn ids(&self) -> Result<Vec<String>> {
        Ok(self.engine.ids()?)
    }

    fn create(&self, id: &str, bundle: &Bundle, opts: &CreateOptions) -> Result<()> {
        self.engine.create(id, bundle, opts)?;
        Ok(())
    }

    fn start(&self, id: &str) -> Result<()> {
        Ok(self.engine.load(id)?.start()?)
    }

    fn state(&self, id: &str) -> Result<ContainerState> {
        Ok(self.engine.load(id)?.state(Kind::Namespace.as_str()))
    }

    fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        Ok(self.engine.load(id)?.kill(signal, all)?)
    }

    fn delete(&self, id: &str, force: bool) -> Result<()> {
        Ok(self.engine.load(id)?.delete(force)?)
    }

    fn pause(&self, id: &str) -> Result<()> {
        Ok(self.engine.load(id)?.pause()?)
    }

    fn resume(&self, id: &str) -> Result<()> {
        Ok(self.engine.load(id)?.resume()?)
    }

    fn pids(&self, id: &str) -> Result<Vec<i32>> {
        Ok(self.engine.load(id)?.pids()?)
    }

    fn exec(&self, id: &str, opts: &ExecOptions) -> Result<i32> {
        Ok(self.engine.exec(id, opts)?)
    }

    fn stats(&self, id: &str) -> Result<Stats> {
        Ok(self.engine.load(id)?.stats()?)
    }

    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        Ok(self.engine.load(id)?.update(resources)?)
    }

    fn memory_cgroup(&self, id: &str) -> Result<Option<std::path::PathBuf>> {
        Ok(self.engine.load(id)?.memory_cgroup())
    }
}
