"""The one registry of batch and output field names.

Every batch is a ``Dict[str, Tensor]`` with flat atoms (all structures
concatenated) and a per-atom structure index. Shapes below use
N = atoms in the batch, M = structures in the batch, P = neighbor pairs.
No other module spells these strings out.
"""

from typing import Final

# --- inputs (per atom) ---
Z: Final[str] = "atomic_numbers"  # (N,) int64, atomic numbers
R: Final[str] = "positions"  # (N, 3) float, Å
IDX_M: Final[str] = "idx_m"  # (N,) int64, structure index of each atom, 0..M-1
# --- inputs (per structure) ---
N_ATOMS: Final[str] = "n_atoms"  # (M,) int64
CELL: Final[str] = "cell"  # (M, 3, 3) float, Å, rows are lattice vectors
PBC: Final[str] = "pbc"  # (M, 3) bool
STRUCTURE_ID: Final[str] = "structure_id"  # (M,) int64, index into the dataset
TOTAL_CHARGE: Final[str] = "total_charge"  # (M,) float, e; absent = neutral (terms: coulomb)

# --- labels (eV, eV/Å, eV/Å^3) ---
ENERGY: Final[str] = "energy"  # (M,) total energy, eV
FORCES: Final[str] = "forces"  # (N, 3) eV/Å
STRESS: Final[str] = "stress"  # (M, 3, 3) eV/Å^3, ASE sign convention
DIPOLE: Final[str] = "dipole"  # (M, 3) e Å, label and output (terms: coulomb)

# --- derived inside the potential ---
SPECIES: Final[str] = "species"  # (N,) int64, index into the model's species list
PAIRS: Final[str] = "pairs"  # (2, P) int64, (center i, neighbor j), both directions
SHIFTS: Final[str] = "shifts"  # (P, 3) float, Cartesian cell shift added to r_j, Å
PAIR_IMAGES: Final[str] = "pair_images"  # (P, 3) int64, cell image of j (with PAIRS in a batch: neighbors given, not searched)
ATOMIC_ENERGY: Final[str] = "atomic_energy"  # (N,) eV, network + reference energy
LAYER_ENERGY: Final[str] = "layer_energy"  # (M, L) eV, per-layer share (hierarchical models)
PAIR_VECTORS: Final[str] = "pair_vectors"  # (P, 3) r_j - r_i (+ shift), Å
PAIR_DISTANCES: Final[str] = "pair_distances"  # (P,) Å

# --- committees (mean over members in ENERGY/FORCES/...; spreads beside them) ---
ENERGY_STD: Final[str] = "energy_std"  # (M,) eV, std of the members' energies (population, ddof=0)
FORCES_STD: Final[str] = "forces_std"  # (N,) eV/Å, RMS deviation of the members' force vectors from the mean force
MAX_FORCES_STD: Final[str] = "max_forces_std"  # (M,) eV/Å, largest FORCES_STD of each structure
MEMBER_ENERGY: Final[str] = "member_energy"  # (K, M) eV, each member's energies
MEMBER_FORCES: Final[str] = "member_forces"  # (K, N, 3) eV/Å, each member's forces

# --- energy terms (nnp.terms) ---
ATOM_FEATURES: Final[str] = "atom_features"  # (N, F) per-atom features a model hands to term heads
CHARGES: Final[str] = "charges"  # (N,) e, per-atom charges summing to each structure's total charge
CHARGES_STD: Final[str] = "charges_std"  # (N,) e, committees: std of the members' charges (population)
TERM_ENERGY: Final[str] = "term_energy:"  # prefix: "term_energy:coulomb" (M,) eV, one term's share
