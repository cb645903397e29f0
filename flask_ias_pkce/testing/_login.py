"""The emulator's login page: what a browser sees at ``/oauth2/authorize``.

IAS shows its sign-in form there and, once the user has signed in, redirects to the
client's ``redirect_uri`` with the code. The emulator's form asks for no password: pick
or type one of its users and submit. Programmatic clients (``requests`` and the like, which
do not ask for HTML) skip the page and are redirected at once, as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape

#: Form fields of the page that are not authorize parameters.
PICK_FIELD = "pick"

_STYLE = """
body { font: 16px/1.4 system-ui, sans-serif; margin: 0; background: #f3f5f7; color: #1d2d3e; }
main { max-width: 26rem; margin: 4rem auto; background: #fff; padding: 2rem;
       border-radius: 8px; box-shadow: 0 1px 4px rgba(0,0,0,.15); }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
p.note { color: #556b82; font-size: .9rem; margin-top: 0; }
p.error { color: #aa0808; }
label, input, button { display: block; width: 100%; box-sizing: border-box; }
input { font: inherit; padding: .5rem; margin: .3rem 0 1rem; }
button { font: inherit; padding: .6rem; margin: .4rem 0; border: 0; border-radius: 4px;
         background: #0a6ed1; color: #fff; cursor: pointer; }
button.user { background: #eaf1fb; color: #0a6ed1; text-align: left; }
"""


def wants_page(accept: str | None) -> bool:
    """Whether the client asked for HTML, as browsers do for a navigation."""
    return accept is not None and "text/html" in accept.lower()


def render(
    query: Mapping[str, str], users: Iterable[str], client_id: str, error: str | None = None
) -> bytes:
    """The sign-in form; it posts the authorize parameters back with the chosen user."""
    hidden = "".join(
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
        for name, value in query.items()
        if name not in ("login_hint", PICK_FIELD)
    )
    names = list(users)
    typed = query.get("login_hint") or names[0]
    options = "".join(f'<option value="{escape(name)}">' for name in names)
    picks = "".join(
        f'<button class="user" type="submit" name="{PICK_FIELD}" value="{escape(name)}">'
        f"Sign in as {escape(name)}</button>"
        for name in names
    )
    problem = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in - IAS emulator</title><style>{_STYLE}</style></head>
<body><main>
<h1>Sign in</h1>
<p class="note">IAS emulator, for tests and development only: no password is asked.
Application <code>{escape(client_id)}</code>.</p>
{problem}
<form method="post" action="/oauth2/authorize" id="login">
{hidden}
<label for="login_hint">E-mail</label>
<input id="login_hint" name="login_hint" list="users" value="{escape(typed)}"
       autocomplete="username" required>
<datalist id="users">{options}</datalist>
<button type="submit" id="sign-in">Continue</button>
{picks}
</form>
</main></body></html>
"""
    return page.encode()


#: Sent with the page: nothing but its own inline style may load, and no one may frame it
#: (IAS refuses framing by untrusted domains too).
PAGE_HEADERS: Mapping[str, str] = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
}
