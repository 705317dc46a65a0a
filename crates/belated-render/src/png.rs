//! PNG through resvg, with DejaVu Sans compiled in so text renders on machines with no fonts.

use std::sync::{Arc, OnceLock};

use crate::RenderError;

/// Pictures larger than this many pixels on a side are scaled down to fit, keeping PNGs of huge graphs
/// to a size image viewers open.
const MAX_SIDE: f32 = 8000.0;

fn fonts() -> Arc<resvg::usvg::fontdb::Database> {
    static FONTS: OnceLock<Arc<resvg::usvg::fontdb::Database>> = OnceLock::new();
    FONTS
        .get_or_init(|| {
            let mut database = resvg::usvg::fontdb::Database::new();
            database.load_font_data(dejavu::sans::regular().to_vec());
            database.set_sans_serif_family("DejaVu Sans");
            Arc::new(database)
        })
        .clone()
}

/// Rasterises an SVG drawn by this crate to PNG bytes, with the embedded DejaVu Sans font.
pub fn to_png(svg: &str) -> Result<Vec<u8>, RenderError> {
    let options = resvg::usvg::Options {
        font_family: "DejaVu Sans".to_string(),
        fontdb: fonts(),
        ..Default::default()
    };
    let tree =
        resvg::usvg::Tree::from_str(svg, &options).map_err(|e| RenderError::Png(e.to_string()))?;
    let size = tree.size();
    let scale = (MAX_SIDE / size.width().max(size.height())).min(1.0);
    let width = (size.width() * scale).ceil().max(1.0) as u32;
    let height = (size.height() * scale).ceil().max(1.0) as u32;
    let mut pixmap = resvg::tiny_skia::Pixmap::new(width, height)
        .ok_or_else(|| RenderError::Png(format!("cannot allocate a {width}x{height} image")))?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| RenderError::Png(e.to_string()))
}
