"""supabase-py (pinned in requirements.txt) signs in, reads the user, refreshes and signs out
against sfp-server's /auth/v1. Usage: python auth.py URL ANON_KEY EMAIL PASSWORD"""

import sys

from supabase import create_client
from supabase_auth.errors import AuthApiError

url, anon_key, email, password = sys.argv[1:5]


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


client = create_client(url, anon_key)

try:
    client.auth.sign_in_with_password({"email": email, "password": "not the password"})
    check(False, "a wrong password raises")
except AuthApiError as e:
    check(e.status == 400 and e.code == "invalid_credentials", f"a wrong password is AuthApiError 400 invalid_credentials ({e.code})")

signed_in = client.auth.sign_in_with_password({"email": email, "password": password})
check(signed_in.session is not None and signed_in.user.email == email, "sign_in_with_password returns a session and the user")
first_refresh = signed_in.session.refresh_token

user = client.auth.get_user()
check(user is not None and user.user.email == email, "get_user reads the signed-in user")

refreshed = client.auth.refresh_session()
check(refreshed.session is not None and refreshed.session.refresh_token != first_refresh, "refresh_session rotates the refresh token")
token = refreshed.session.access_token

client.auth.sign_out()
check(client.auth.get_session() is None, "get_session is empty after sign_out")
try:
    client.auth.get_user(token)
    check(False, "the signed-out token no longer reads the user")
except AuthApiError as e:
    check(e.status == 403, f"the signed-out token no longer reads the user ({e.code})")

print("supabase-py conformance: all passed", flush=True)
