"""The admin API's refunds (ops/admin.py): listed, marked refunded, declined, with every
refusal one line that changes nothing; and the dashboard's snapshot holding them."""

from __future__ import annotations

import httpx

from ops.admin import serve_admin_app
from store import EventStore
from tests.actors.test_payment_monitor import PAYER, PRICE, WALLET_RAW
from tests.actors.test_transfers_recorded import second_payment
from tests.ops.test_admin_api import AUTH, TOKEN


async def test_refunds_are_listed_marked_and_declined_with_one_line_refusals(
    store: EventStore,
) -> None:
    async with (
        second_payment(store) as (tonapi, refund),
        serve_admin_app(store, token=TOKEN) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        assert (await http.get("/api/refunds")).status_code == 401
        listed = (await http.get("/api/refunds", headers=AUTH)).json()
        (shown,) = listed["refunds"]
        assert (shown["refund_id"], shown["status"], shown["to"]) == (
            refund.refund_id,
            "due",
            PAYER,
        )
        assert (shown["amount_nanotons"], shown["category"], shown["payment_id"]) == (
            PRICE,
            "second-payment",
            1,
        )
        assert listed["totals"]["due"] == 1
        head = await store.head()
        short = refund.refund_id[:12]
        refusals = [
            ("GET", "/api/refunds?status=lost", None, 400, "the one parameter is status"),
            ("GET", "/api/refunds?sort=asc", None, 400, "the one parameter is status"),
            ("POST", f"/api/refunds/{short}/refunded", {"tx_hash": "xyz"}, 400, "64 hex"),
            ("POST", f"/api/refunds/{short}/refunded", {"hash": "ab" * 32}, 400, "the body is"),
            ("POST", "/api/refunds/00000000/refunded", {"tx_hash": "ab" * 32}, 404, "no refund"),
            ("POST", f"/api/refunds/{short}/decline", {"reason": " "}, 400, "say why"),
            ("POST", f"/api/refunds/{short}/decline", {}, 400, "the body is"),
            ("POST", f"/api/refunds/{short}/resend", {}, 404, "unknown refund action"),
            (
                "POST",
                f"/api/refunds/{short}/refunded",
                {"tx_hash": refund.refund_id},
                409,
                "a transfer the wallet received",
            ),
        ]
        for method, path, body, status, message in refusals:
            answer = await http.request(method, path, json=body, headers=AUTH)
            assert answer.status_code == status, (path, answer.text)
            error = answer.json()["error"]
            assert message in error, error
            assert "\n" not in error
        assert await store.head() == head  # nothing recorded

        out = tonapi.send(WALLET_RAW, destination=PAYER, value=PRICE)
        answer = await http.post(
            f"/api/refunds/{short}/refunded",
            json={"tx_hash": out["hash"], "note": "from the app"},
            headers=AUTH,
        )
        assert answer.status_code == 200, answer.text
        marked = answer.json()["refund"]
        assert (marked["status"], marked["tx_hash"], marked["note"]) == (
            "sent",
            out["hash"],
            "from the app",
        )
        assert marked["marked_by"] == "api:127.0.0.1"
        again = await http.post(
            f"/api/refunds/{short}/refunded", json={"tx_hash": out["hash"]}, headers=AUTH
        )
        assert again.status_code == 409
        assert "already marked refunded" in again.json()["error"]
        declined = await http.post(
            f"/api/refunds/{short}/decline", json={"reason": "changed my mind"}, headers=AUTH
        )
        assert declined.status_code == 409  # it is awaiting the chain, not due

        overview = (await http.get("/api/overview", headers=AUTH)).json()
        refunds = overview["refunds"]
        assert refunds["open_total"] == 1
        (row,) = refunds["open"]
        assert (row["status"], row["amount_ton"], row["tx_hash"]) == ("sent", "1.50", out["hash"])
        assert row["owed_for"] == "second payment of payment 1, already paid"
        assert refunds["totals"]["sent"] == 1
        assert (await http.get("/api/refunds?status=due", headers=AUTH)).json()["refunds"] == []
        everything = (await http.get("/api/refunds?status=all", headers=AUTH)).json()
        assert [r["status"] for r in everything["refunds"]] == ["sent"]
