//! Data-parallel training under `mpirun`: which rank this process is, and (with the `mpi`
//! feature) the collective operations the training loop asks of the ranks, through MPI
//! (OpenMPI, via rsmpi). Gradients cross host memory, so ranks may run any GPU vendor.
//! Without the feature, a process that finds itself one of several ranks refuses to train:
//! each would train alone into the same run directory.

use autoprog::train::Collective;

/// Launchers' variables for the number of ranks (OpenMPI, then MPICH's Hydra).
const SIZE_VARIABLES: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];
/// Launchers' variables for the rank on this machine.
const LOCAL_RANK_VARIABLES: [&str; 2] = ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"];

fn first_number(variables: &[&str]) -> Option<usize> {
    variables.iter().find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Ranks of the job `mpirun` started this process in (1 outside one).
pub fn launched_ranks() -> usize {
    first_number(&SIZE_VARIABLES).unwrap_or(1)
}

/// This process's rank among those on its machine, as the launcher says.
pub fn local_rank() -> Option<usize> {
    first_number(&LOCAL_RANK_VARIABLES)
}

/// Rank `rank`'s entry of a comma-separated `--adapter` list (rank modulo its length).
pub fn adapter_of_rank(list: &str, rank: usize) -> String {
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    names[rank % names.len()].to_string()
}

/// Refuses a command other than `train` and `bench` (`data_parallel`: this one is either)
/// started as one of several ranks: each rank would run it alone, on the same files.
pub fn only_data_parallel_commands(data_parallel: bool) -> anyhow::Result<()> {
    let ranks = launched_ranks();
    anyhow::ensure!(
        data_parallel || ranks <= 1,
        "this command runs in one process, but mpirun started {ranks}: only `train` and `bench` run data-parallel; \
         run it without mpirun"
    );
    Ok(())
}

/// Joins the job `mpirun` started this process in: `None` for a process alone.
pub fn join() -> anyhow::Result<Option<Peers>> {
    let ranks = launched_ranks();
    if ranks <= 1 {
        return Ok(None);
    }
    Peers::init(ranks).map(Some)
}

/// `result`, except that an error on one rank of a job ends the whole job (after saying
/// which rank failed and why): the other ranks would wait for this one forever.
pub fn or_abort<T>(peers: Option<&Peers>, result: anyhow::Result<T>) -> anyhow::Result<T> {
    match (result, peers) {
        (Err(e), Some(peers)) => abort_job(peers, &e),
        (result, _) => result,
    }
}

/// Ends every rank of the job after saying which rank failed and why.
pub fn abort_job(peers: &Peers, error: &anyhow::Error) -> ! {
    eprintln!("rank {}: error: {error:#}", peers.rank());
    peers.abort(1)
}

/// The other ranks of a data-parallel job.
#[cfg(feature = "mpi")]
pub struct Peers {
    world: mpi::topology::SimpleCommunicator,
    adapters: Vec<String>,
    /// Finalizes MPI when dropped, after everything else.
    _universe: mpi::environment::Universe,
}

/// OpenMPI's setting for ranks that wait: yield the CPU rather than poll.
#[cfg(feature = "mpi")]
const YIELD_VARIABLE: &str = "OMPI_MCA_mpi_yield_when_idle";

/// Longest adapter name shared with the other ranks, in bytes.
#[cfg(feature = "mpi")]
const NAME_BYTES: usize = 256;

#[cfg(feature = "mpi")]
impl Peers {
    fn init(launched: usize) -> anyhow::Result<Peers> {
        use mpi::traits::Communicator;
        // Ranks that wait for each other yield the CPU instead of spinning (unless the user
        // set it): a spinning rank takes the cores that a CPU adapter and the data workers
        // need (on lavapipe, 2 ranks on 2 cores ran 20x slower). On GPUs the wait is the
        // all-reduce's transfer, which spinning would not shorten.
        if std::env::var_os(YIELD_VARIABLE).is_none() {
            // Still single-threaded here: nothing else reads the environment concurrently.
            std::env::set_var(YIELD_VARIABLE, "1");
        }
        let universe = mpi::initialize().ok_or_else(|| anyhow::anyhow!("MPI was already initialised"))?;
        let world = universe.world();
        let size = world.size() as usize;
        anyhow::ensure!(
            size == launched,
            "the launcher started {launched} ranks but MPI reports {size}: is this autoprog built against the MPI \
             of the mpirun that started it?"
        );
        Ok(Peers { world, adapters: Vec::new(), _universe: universe })
    }

    /// Tells every rank the name of this rank's adapter (a collective call).
    pub fn share_adapter(&mut self, name: &str) {
        use mpi::traits::CommunicatorCollectives;
        let mut mine = [0u8; NAME_BYTES];
        let bytes = name.as_bytes();
        let len = bytes.len().min(NAME_BYTES);
        mine[..len].copy_from_slice(&bytes[..len]);
        let mut all = vec![0u8; NAME_BYTES * self.ranks()];
        self.world.all_gather_into(&mine[..], &mut all[..]);
        self.adapters = all
            .chunks(NAME_BYTES)
            .map(|chunk| {
                let end = chunk.iter().position(|&b| b == 0).unwrap_or(NAME_BYTES);
                String::from_utf8_lossy(&chunk[..end]).into_owned()
            })
            .collect();
    }

    /// Ends every rank of the job at once (after this one reported why).
    pub fn abort(&self, code: i32) -> ! {
        use mpi::traits::Communicator;
        self.world.abort(code)
    }
}

#[cfg(feature = "mpi")]
impl Collective for Peers {
    fn rank(&self) -> usize {
        use mpi::traits::Communicator;
        self.world.rank() as usize
    }

    fn ranks(&self) -> usize {
        use mpi::traits::Communicator;
        self.world.size() as usize
    }

    fn adapters(&self) -> Vec<String> {
        self.adapters.clone()
    }

    fn sum_f32(&self, values: &mut [f32]) -> anyhow::Result<()> {
        use mpi::collective::{CommunicatorCollectives, SystemOperation};
        let mine = values.to_vec();
        self.world.all_reduce_into(&mine[..], values, SystemOperation::sum());
        Ok(())
    }

    fn sum_f64(&self, values: &mut [f64]) -> anyhow::Result<()> {
        use mpi::collective::{CommunicatorCollectives, SystemOperation};
        let mine = values.to_vec();
        self.world.all_reduce_into(&mine[..], values, SystemOperation::sum());
        Ok(())
    }

    fn max_f64(&self, values: &mut [f64]) -> anyhow::Result<()> {
        use mpi::collective::{CommunicatorCollectives, SystemOperation};
        let mine = values.to_vec();
        self.world.all_reduce_into(&mine[..], values, SystemOperation::max());
        Ok(())
    }

    fn broadcast_f64(&self, values: &mut [f64]) -> anyhow::Result<()> {
        use mpi::traits::{Communicator, Root};
        self.world.process_at_rank(0).broadcast_into(values);
        Ok(())
    }
}

/// Built without MPI: there are never peers (see [`join`]).
#[cfg(not(feature = "mpi"))]
pub struct Peers(std::convert::Infallible);

#[cfg(not(feature = "mpi"))]
impl Peers {
    fn init(launched: usize) -> anyhow::Result<Peers> {
        anyhow::bail!(
            "this process is one of {launched} ranks started by mpirun, but this autoprog was built without MPI: \
             each rank would train alone into the same run directory. Build it with the `mpi` feature (cargo build \
             --release --features autoprog-trainer/mpi; OpenMPI: apt-get install openmpi-bin libopenmpi-dev \
             libclang-dev), or run it without mpirun"
        )
    }

    pub fn share_adapter(&mut self, _name: &str) {
        match self.0 {}
    }

    pub fn abort(&self, _code: i32) -> ! {
        match self.0 {}
    }
}

#[cfg(not(feature = "mpi"))]
impl Collective for Peers {
    fn rank(&self) -> usize {
        match self.0 {}
    }

    fn ranks(&self) -> usize {
        match self.0 {}
    }

    fn adapters(&self) -> Vec<String> {
        match self.0 {}
    }

    fn sum_f32(&self, _values: &mut [f32]) -> anyhow::Result<()> {
        match self.0 {}
    }

    fn sum_f64(&self, _values: &mut [f64]) -> anyhow::Result<()> {
        match self.0 {}
    }

    fn max_f64(&self, _values: &mut [f64]) -> anyhow::Result<()> {
        match self.0 {}
    }

    fn broadcast_f64(&self, _values: &mut [f64]) -> anyhow::Result<()> {
        match self.0 {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_take_their_adapter_from_the_list_in_turn() {
        let list = "NVIDIA H100, AMD MI300";
        let picks: Vec<String> = (0..4).map(|rank| adapter_of_rank(list, rank)).collect();
        assert_eq!(picks, ["NVIDIA H100", "AMD MI300", "NVIDIA H100", "AMD MI300"]);
        assert_eq!(adapter_of_rank("llvmpipe", 3), "llvmpipe");
    }
}
