"""visualize(): pictures written by extension, displayable objects, structure, collapsing, errors."""

import warnings
import xml.etree.ElementTree as ET

import pytest

import belated
from belated import delayed

SVG = "{http://www.w3.org/2000/svg}"


def square(x):
    return x * x


def structure(svg):
    root = ET.fromstring(svg)
    groups = root.iter(f"{SVG}g")
    tasks, data = [], 0
    for group in groups:
        if group.get("class") == "node task":
            tasks.append(group.find(f"{SVG}text").text)
        elif group.get("class") == "node data":
            data += 1
    edges = sum(1 for path in root.iter(f"{SVG}path") if path.get("class") == "edge")
    return sorted(tasks), data, edges


def test_tutorial_example_1_picture():
    res = delayed(square)(3) + delayed(square)(4)
    picture = res.visualize(filename=None, format="svg")
    assert structure(picture.data) == (["add", "square", "square"], 3, 5)
    assert picture._repr_svg_() == picture.data and picture._repr_png_() is None


def test_tutorial_example_3_picture():
    @delayed
    def power_3(x):
        return x**3

    final = [delayed(square)(i) if i % 2 == 0 else power_3(i) for i in range(1, 11)]
    picture = belated.visualize(delayed(sum)(final), filename=None)
    tasks, data, edges = structure(picture.data)
    assert tasks.count("square") == 5 and tasks.count("power_3") == 5 and "sum" in tasks
    assert (data, edges) == (11, 21)


def test_literals_are_drawn_as_labelled_boxes():
    picture = (delayed(2) + 1).visualize(filename=None)
    tasks, data, edges = structure(picture.data)
    assert (tasks, data, edges) == (["add"], 2, 2)
    assert ">int<" in picture.data


def test_files_are_written_by_extension(tmp_path):
    res = delayed(square)(3)
    png = res.visualize(filename=tmp_path / "graph.png")
    assert (tmp_path / "graph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png._repr_png_() == png.data and png._repr_svg_() is None
    res.visualize(filename=str(tmp_path / "graph.svg"))
    assert (tmp_path / "graph.svg").read_text().startswith("<svg")
    res.visualize(filename=str(tmp_path / "graph.dot"))
    assert (tmp_path / "graph.dot").read_text().startswith("digraph belated")
    res.visualize(filename=str(tmp_path / "mydask"))
    assert (tmp_path / "mydask.png").exists(), "dask's default: png appended to a bare name"
    res.visualize(filename=str(tmp_path / "bare"), format="svg")
    assert (tmp_path / "bare.svg").exists()


def test_rankdir_left_to_right():
    svg = (delayed(square)(1) + 1).visualize(filename=None, rankdir="LR").data
    width, height = float(ET.fromstring(svg).get("width")), float(ET.fromstring(svg).get("height"))
    assert width > height


def test_large_graphs_collapse_and_say_so():
    total = delayed(sum)([delayed(square)(i) for i in range(500)])
    with pytest.warns(UserWarning, match="500 'square' tasks"):
        picture = total.visualize(filename=None)
    assert structure(picture.data)[0] == ["square \u00d7500", "sum"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = total.visualize(filename=None, collapse_above=1000)
    assert len(structure(full.data)[0]) == 501


def test_bad_arguments_are_clear_errors(tmp_path):
    res = delayed(square)(1)
    with pytest.raises(ValueError, match=r"\.svg, \.png or \.dot"):
        res.visualize(filename=str(tmp_path / "graph.jpeg"))
    with pytest.raises(ValueError, match="rankdir"):
        res.visualize(filename=None, rankdir="UP")
    assert not (tmp_path / "graph.jpeg").exists()


def test_visualize_accepts_several_objects_and_containers():
    a, b = delayed(square)(1), delayed(square)(2)
    tasks, _, _ = structure(belated.visualize([a, {"b": b}], filename=None).data)
    assert tasks == ["square", "square"]


@pytest.mark.parametrize("char", [chr(c) for c in [*range(32), *range(0x7F, 0xA0), 0xFFFE, 0xFFFF]])
def test_keys_with_control_characters_draw_as_svg_and_png(char):
    task = delayed(square)(3, dask_key_name=f"odd{char}key")
    svg = task.visualize(filename=None, format="svg").data
    (label,) = structure(svg)[0]
    assert label.startswith("odd") and label.endswith("key") and char not in label
    assert task.visualize(filename=None, format="png").data[:8] == b"\x89PNG\r\n\x1a\n"


def test_xml_hostile_keys_are_drawn_as_written():
    for name in ["<script>alert(1)</script>", "a & b &amp;", "\"q\" 'q'", "]]><!--", "😀 \u202e"]:
        svg = delayed(square)(3, dask_key_name=name).visualize(filename=None).data
        assert structure(svg)[0] == [name]
