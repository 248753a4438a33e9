"""(e) Dataset uploads: stored in the generic layout when valid; 413 above the size limit, 422 for a
corrupt image (naming it), and nothing written on error."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.stack


def _png(seed: int, size: int = 16) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _interactions(n_items: int, n_users: int = 6) -> bytes:
    rows = ["user,item,timestamp"]
    for u in range(n_users):
        for j in range(4):
            rows.append(f"u{u},i{(u + j) % n_items},{u * 10 + j}")
    return ("\n".join(rows) + "\n").encode()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, blob in files.items():
            zf.writestr(name, blob)
    return buf.getvalue()


def _catalog(n: int = 5) -> dict[str, bytes]:
    files = {f"shop/images/i{k}.png": _png(k) for k in range(n)}
    files["shop/interactions.csv"] = _interactions(n)
    files["shop/categories.csv"] = ("item,category\n" + "".join(f"i{k},c{k % 2}\n" for k in range(n))).encode()
    return files


def _written(settings) -> list[str]:
    roots = [settings.home / "datasets", settings.home / "tmp"]
    return sorted(str(p) for r in roots if r.exists() for p in r.rglob("*"))


def test_valid_zip_is_stored_in_generic_layout_and_loads(gateway_client, settings):
    from advrec_common.datasets.generic_layout import load_generic_dataset

    r = gateway_client.post("/v1/datasets", files={"archive": ("shop.zip", _zip(_catalog()), "application/zip")})
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["n_images"] == 5 and info["n_interactions"] == 24 and info["has_categories"]
    root = settings.home / "datasets"
    ds = load_generic_dataset(root / info["spec"]["images_dir"], root / info["spec"]["interactions"],
                              root / info["spec"]["categories"])
    assert len(ds.catalog) == 5 and ds.n_users == 6
    assert gateway_client.get(f"/v1/datasets/{info['id']}").json()["id"] == info["id"]
    assert [d["id"] for d in gateway_client.get("/v1/datasets").json()] == [info["id"]]
    # same content -> same id, nothing duplicated
    again = gateway_client.post("/v1/datasets", files={"archive": ("x.zip", _zip(_catalog()), "application/zip")})
    assert again.json()["id"] == info["id"] and len(list(root.iterdir())) == 1


def test_separate_files_upload(gateway_client):
    files = [("images", (f"i{k}.png", _png(k), "image/png")) for k in range(4)]
    files.append(("interactions", ("interactions.csv", _interactions(4), "text/csv")))
    r = gateway_client.post("/v1/datasets", files=files)
    assert r.status_code == 201, r.text
    assert r.json()["n_images"] == 4 and not r.json()["has_categories"]


def test_oversize_upload_is_413_and_writes_nothing(gateway_client, settings):
    big = _catalog()
    big["shop/images/huge.png"] = np.random.default_rng(0).bytes(settings.max_upload_bytes + 10)
    r = gateway_client.post("/v1/datasets", files={"archive": ("big.zip", _zip(big), "application/zip")})
    assert r.status_code == 413
    assert _written(settings) == []


def test_corrupt_image_is_422_naming_the_file_and_writes_nothing(gateway_client, settings):
    files = _catalog()
    files["shop/images/i3.png"] = _png(3)[:40]  # truncated PNG
    r = gateway_client.post("/v1/datasets", files={"archive": ("bad.zip", _zip(files), "application/zip")})
    assert r.status_code == 422
    assert "images/i3.png" in r.json()["detail"]
    assert _written(settings) == []


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda f: f.pop("shop/interactions.csv"), "no interactions"),
    (lambda f: f.update({"shop/interactions.csv": b"who,what\nx,y\n"}), "column"),
    (lambda f: f.update({"shop/notes.txt": b"hi"}), "unexpected file"),
])
def test_bad_layouts_are_422(gateway_client, settings, mutate, message):
    files = _catalog()
    mutate(files)
    r = gateway_client.post("/v1/datasets", files={"archive": ("bad.zip", _zip(files), "application/zip")})
    assert r.status_code == 422 and message in r.json()["detail"], r.text
    assert _written(settings) == []


def test_not_a_zip_is_422(gateway_client, settings):
    r = gateway_client.post("/v1/datasets", files={"archive": ("x.zip", b"PK-not-really", "application/zip")})
    assert r.status_code == 422 and "not a zip" in r.json()["detail"]
    assert _written(settings) == []


def test_async_client_uploads_through_asgi(settings, tmp_path):
    import asyncio

    import httpx

    from advrec.client import AsyncAdvrecClient
    from gateway.app import create_app

    from .conftest import API_KEY

    archive = tmp_path / "shop.zip"
    archive.write_bytes(_zip(_catalog(3)))

    async def go():
        transport = httpx.ASGITransport(app=create_app(settings, reconcile_on_start=False))
        async with AsyncAdvrecClient("http://gw", API_KEY, transport=transport) as c:
            info = await c.upload_dataset(archive)
            return info, await c.dataset(info["id"])

    info, again = asyncio.run(go())
    assert info["n_images"] == 3 and again == info


def test_cli_column_flags_reach_the_gateway_as_a_mapping(settings, tmp_path):
    """`advrec upload --user-col ... --delimiter tab` -> the client's form fields -> the dataset's spec block."""
    import asyncio

    import httpx

    from advrec.cli import build_parser
    from advrec.client import AsyncAdvrecClient
    from advrec.commands._columns import column_mappings
    from gateway.app import create_app

    from .conftest import API_KEY

    args = build_parser().parse_args(["upload", "x.zip", "--user-col", "customer", "--item-col", "sku",
                                      "--delimiter", "tab", "--category-col", "dept"])
    columns, cats = column_mappings(args)
    assert columns == {"user": "customer", "item": "sku", "delimiter": "\t"} and cats == {"category": "dept"}
    files = {f"images/i{k}.png": _png(k) for k in range(3)}
    files["interactions.tsv"] = ("customer\tsku\n" + "".join(f"c{u}\ti{(u + j) % 3}\n" for u in range(4)
                                                             for j in range(2))).encode()
    files["categories.csv"] = ("item,dept\n" + "".join(f"i{k},d{k % 2}\n" for k in range(3))).encode()
    archive = tmp_path / "shop.zip"
    archive.write_bytes(_zip(files))

    async def go():
        transport = httpx.ASGITransport(app=create_app(settings, reconcile_on_start=False))
        async with AsyncAdvrecClient("http://gw", API_KEY, transport=transport) as c:
            return await c.upload_dataset(archive, columns=columns, category_columns=cats)

    info = asyncio.run(go())
    assert info["spec"]["columns"] == columns and info["spec"]["category_columns"] == {"item": "item", **cats}
    assert info["n_interactions"] == 8


def _one_colour_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def test_upload_costs_are_bounded_before_decoding(gateway_client, settings):
    """A small zip of large one-colour images (a CPU bomb): 413 from the headers, before any decode."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k in range(8):  # 72 M pixels; each PNG ~33 KB, each deflated member ~0.3 KB
            zf.writestr(f"images/i{k}.png", _one_colour_png(3000))
        zf.writestr("interactions.csv", _interactions(8))
    data = buf.getvalue()
    assert len(data) < 10_000
    gateway_client.app.state.settings = settings.model_copy(update={"max_upload_pixels": 20_000_000,
                                                                   "max_upload_bytes": 5_000_000})
    r = gateway_client.post("/v1/datasets", files={"archive": ("bomb.zip", data, "application/zip")})
    assert r.status_code == 413 and "max_upload_pixels" in r.json()["detail"], r.text
    assert _written(settings) == []


def test_zip_member_count_ratio_and_cpu_limits(gateway_client, settings):
    many = {f"images/i{k}.png": _png(k, 4) for k in range(30)}
    many["interactions.csv"] = _interactions(30)
    gateway_client.app.state.settings = settings.model_copy(update={"max_zip_members": 20})
    r = gateway_client.post("/v1/datasets", files={"archive": ("many.zip", _zip(many), "application/zip")})
    assert r.status_code == 413 and "max_zip_members" in r.json()["detail"], r.text

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:  # 5 MB of commas: ~5 KB
        zf.writestr("interactions.csv", b"user,item\n" + b"," * 5_000_000)
        zf.writestr("images/i0.png", _png(0))
    gateway_client.app.state.settings = settings.model_copy(update={"max_upload_bytes": 10_000_000})
    r = gateway_client.post("/v1/datasets", files={"archive": ("ratio.zip", buf.getvalue(), "application/zip")})
    assert r.status_code == 413 and "max_zip_ratio" in r.json()["detail"], r.text

    gateway_client.app.state.settings = settings.model_copy(update={"upload_cpu_seconds": 1e-9})
    r = gateway_client.post("/v1/datasets", files={"archive": ("ok.zip", _zip(_catalog()), "application/zip")})
    assert r.status_code == 413 and "upload_cpu_seconds" in r.json()["detail"], r.text
    assert _written(settings) == []


def test_uploads_beyond_the_concurrency_are_503(gateway_client, settings):
    from gateway.datasets import upload_slots

    class Req:
        app = gateway_client.app

    slots = upload_slots(Req())
    held = [slots.acquire(blocking=False) for _ in range(settings.upload_concurrency)]
    try:
        assert all(held)
        r = gateway_client.post("/v1/datasets", files={"archive": ("x.zip", _zip(_catalog()), "application/zip")})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    finally:
        for _ in held:
            slots.release()
    r = gateway_client.post("/v1/datasets", files={"archive": ("x.zip", _zip(_catalog()), "application/zip")})
    assert r.status_code == 201


def test_a_non_utf8_interactions_file_is_422(gateway_client, settings):
    files = _catalog()
    files["shop/interactions.csv"] = b"user,item\n\xff\xfe,i1\nu2,i2\n"
    r = gateway_client.post("/v1/datasets", files={"archive": ("bad.zip", _zip(files), "application/zip")})
    assert r.status_code == 422 and "UTF-8" in r.json()["detail"], r.text
    assert _written(settings) == []


@pytest.mark.parametrize(("table", "words"), [
    (b"user,item," + b"x" * 140_000 + b"\nu0,i0,\n", "longer than 131,072 characters"),  # was a 500
    (b"user,item\nu0,i\x000\nu1,i1\nu2,i2\n", "NUL bytes"),  # was stored, ids holding a NUL
])
def test_a_csv_that_is_no_text_table_is_422_and_stores_nothing(gateway_client, settings, table, words):
    for field in ("interactions", "categories"):
        files = _catalog()
        files[f"shop/{field}.csv"] = table
        r = gateway_client.post("/v1/datasets", files={"archive": ("bad.zip", _zip(files), "application/zip")})
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
        assert words in r.text and [e["loc"].split(":")[0] for e in r.json()["errors"]] == [f"{field}.csv"], r.text
        assert _written(settings) == []


def test_upload_warnings_name_the_uploaded_files_not_a_server_folder(gateway_client, settings):
    """Orders of SKUs without an image: the warning said "... in '/srv/.../tmp/upload-k3x9/images'"."""
    files = _catalog()
    files["shop/interactions.csv"] += b"u0,gone1,90\nu1,gone2,91\n"
    r = gateway_client.post("/v1/datasets", files={"archive": ("shop.zip", _zip(files), "application/zip")})
    assert r.status_code == 201, r.text
    (warning,) = [w for w in r.json()["warnings"] if "no image" in w["msg"]]
    assert warning["loc"] == "interactions.csv:26"
    assert "2 item(s) of 2 interaction(s) have no image <item id>.<jpg|jpeg|png|webp> in 'images'" in warning["msg"]
    assert str(settings.home) not in r.text and "upload-" not in r.text and "tmp" not in r.text
    stored = gateway_client.get(f"/v1/datasets/{r.json()['id']}").json()
    assert stored["warnings"] == r.json()["warnings"]


def test_upload_with_the_shops_own_column_names(gateway_client, settings):
    """An export with its own headers (customer;sku;bought_at, sku,department) uploads with a column
    mapping, which the dataset's spec block keeps; without it the answer names the column to map."""
    from advrec_common.datasets.generic_layout import (
        CategoryColumns,
        InteractionColumns,
        load_generic_dataset,
    )

    files = {f"shop/images/i{k}.png": _png(k) for k in range(5)}
    files["shop/interactions.csv"] = ("customer;sku;bought_at\n" + "".join(
        f"c{u};i{(u + j) % 5};2024-01-0{j + 1}T10:00:00Z\n" for u in range(6) for j in range(4))).encode()
    files["shop/categories.csv"] = ("sku,department\n" + "".join(f"i{k},d{k % 2}\n" for k in range(5))).encode()
    archive = ("shop.zip", _zip(files), "application/zip")
    r = gateway_client.post("/v1/datasets", files={"archive": archive})
    assert r.status_code == 422 and "no 'user' column" in r.json()["detail"] and "columns.user" in r.json()["detail"]
    # every problem at once, each with its file and line: both files' headers, not only the first
    assert [(e["loc"], e["msg"].split(";")[0]) for e in r.json()["errors"]] == [
        ("interactions.csv:1", "no 'user' column for the user in the header ['customer', 'sku', 'bought_at']"),
        ("interactions.csv:1", "no 'item' column for the item in the header ['customer', 'sku', 'bought_at']"),
        ("categories.csv:1", "no 'item' column for the item in the header ['sku', 'department']"),
        ("categories.csv:1", "no 'category' column for the category in the header ['sku', 'department']")]
    assert "category_columns.category; on the command line --category-col" in r.json()["errors"][3]["msg"]
    assert str(settings.home) not in r.text
    columns = {"user": "customer", "item": "sku", "timestamp": "bought_at"}
    r = gateway_client.post("/v1/datasets", files={"archive": archive}, data={
        "columns": json.dumps(columns), "category_columns": json.dumps({"item": "sku", "category": "department"})})
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    assert spec["columns"] == columns and spec["category_columns"] == {"item": "sku", "category": "department"}
    assert r.json()["warnings"] == []
    root = settings.home / "datasets"
    ds = load_generic_dataset(root / spec["images_dir"], root / spec["interactions"], root / spec["categories"],
                              columns=InteractionColumns(**spec["columns"]),
                              category_columns=CategoryColumns(**spec["category_columns"]))
    assert ds.n_users == 6 and len(ds.catalog) == 5 and set(ds.catalog.categories) == {"d0", "d1"}
    for bad, loc in (("{not json", "columns"), ('["user"]', "columns"), ('{"usr": "customer"}', "columns.usr"),
                     ("[" * 3000 + "]" * 3000, "columns"), ('{"user": "' + "u" * 5000 + '"}', "columns")):
        r = gateway_client.post("/v1/datasets", files={"archive": archive}, data={"columns": bad})
        assert r.status_code == 422 and loc in [p["loc"] for p in r.json()["errors"]], r.text


def test_uploading_a_missing_file_is_a_clear_error_not_a_bug(tmp_path, capsys):
    from advrec.cli import main

    assert main(["upload", str(tmp_path / "missing.zip"), "--server", "http://127.0.0.1:9", "--retry-for", "0"]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "missing.zip" in err and "bug" not in err


def test_upload_names_its_files_with_flags(tmp_path, capsys):
    """A shop folder whose log is not called interactions.csv: --interactions/--categories name the files;
    an archive takes no file flags; every missing piece is listed at once."""
    from advrec.cli import build_parser, main
    from advrec.commands.client import _upload_files

    shop = tmp_path / "shop"
    (shop / "photos").mkdir(parents=True)
    for k in range(2):
        (shop / "photos" / f"i{k}.png").write_bytes(_png(k))
    (shop / "events.csv").write_text("user,item\nu,i0\nu,i1\n")
    (shop / "labels.csv").write_text("item,category\ni0,a\ni1,b\n")
    parse = build_parser().parse_args
    files = _upload_files(parse(["upload", "--images", str(shop / "photos"), "--interactions",
                                 str(shop / "events.csv"), "--categories", str(shop / "labels.csv")]))
    assert [f.name for f in files["images"]] == ["i0.png", "i1.png"]
    assert (files["interactions"], files["categories"]) == (str(shop / "events.csv"), str(shop / "labels.csv"))
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"images/i0.png": _png(0)}))
    assert _upload_files(parse(["upload", str(archive)])) == {"path": archive}

    server = ["--server", "http://127.0.0.1:9", "--retry-for", "0"]
    assert main(["upload", str(archive), "--interactions", "x.csv", *server]) == 2
    assert "is an archive" in capsys.readouterr().err
    assert main(["upload", str(shop), *server]) == 2  # no images/ and no interactions.csv in it
    err = capsys.readouterr().err
    assert "--images: no images folder" in err and "--interactions: no interactions file" in err
    assert main(["upload", str(shop / "events.csv"), *server]) == 2  # a file that is no zip: said before sending
    assert "is not a zip archive" in capsys.readouterr().err


def test_an_upload_answers_what_its_check_noticed(gateway_client, settings):
    """Labels of items that are not in the catalog do not stop an upload; the answer says so."""
    files = {f"images/i{k}.png": _png(k) for k in range(5)}
    files["interactions.csv"] = ("user,item\n" + "".join(f"u{u},i{(u + j) % 5}\n" for u in range(6)
                                                         for j in range(3))).encode()
    files["categories.csv"] = ("item,category\n" + "".join(f"i{k},c{k % 2}\n" for k in range(5))
                               + "I-3,c0\n").encode()  # an id spelt otherwise than in the log
    r = gateway_client.post("/v1/datasets", files={"archive": ("shop.zip", _zip(files), "application/zip")})
    assert r.status_code == 201, r.text
    warned = r.json()["warnings"]
    assert [w["loc"] for w in warned] == ["interactions.csv:1", "categories.csv"]
    assert str(settings.home) not in r.text and "upload-" not in r.text
    assert "last row in file order" in warned[0]["msg"]  # no timestamp column: the split follows the file
    assert "1 labelled item(s) are not in the catalog" in warned[1]["msg"] and "I-3" in warned[1]["msg"]
