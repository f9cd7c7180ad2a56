//! `doozer`: the command-line client (reference §8). See [`doozer::cli`].

fn main() {
    std::process::exit(doozer::cli::main());
}
