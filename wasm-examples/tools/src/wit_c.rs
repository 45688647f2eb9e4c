//! `wit-c WIT_DIR WORLD_FILE OUT_DIR`: C bindings (`<world>.h`, `<world>.c` and the
//! `<world>_component_type.o` that tells wit-component the world) for the world in
//! WORLD_FILE, whose packages (e.g. `wasi:http`) are resolved from WIT_DIR.

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, wit_dir, world_file, out_dir] = args.as_slice() else {
        anyhow::bail!("usage: wit-c WIT_DIR WORLD_FILE OUT_DIR")
    };
    let mut resolve = wit_parser::Resolve::default();
    resolve
        .push_dir(wit_dir)
        .with_context(|| format!("reading WIT from {wit_dir}"))?;
    let main = resolve
        .push_file(world_file)
        .with_context(|| format!("reading {world_file}"))?;
    let world = resolve.select_world(&[main], None)?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)?;
    std::fs::create_dir_all(out_dir)?;
    for (name, contents) in files.iter() {
        let path = std::path::Path::new(out_dir).join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
