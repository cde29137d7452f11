// supabase-js (pinned in package.json) signs in, reads the user, refreshes and signs out
// against sfp-server's /auth/v1. Usage: node auth.mjs URL ANON_KEY EMAIL PASSWORD
// Prints "ok: ..." per expectation; exits non-zero on the first broken one.
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const [url, anonKey, email, password] = process.argv.slice(2);

function check(condition, what) {
  if (!condition) {
    console.log(`FAILED: ${what}`);
    process.exit(1);
  }
  console.log(`ok: ${what}`);
}

const supabase = createClient(url, anonKey, {
  auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  // Node 20 has no WebSocket of its own.
  realtime: { transport: ws },
});

const bad = await supabase.auth.signInWithPassword({ email, password: 'not the password' });
check(bad.error && bad.error.status === 400 && bad.error.code === 'invalid_credentials',
  `a wrong password is AuthApiError 400 invalid_credentials (${bad.error && bad.error.code})`);

const good = await supabase.auth.signInWithPassword({ email, password });
check(!good.error && good.data.session && good.data.session.access_token,
  `signInWithPassword returns a session ${good.error ? good.error.message : ''}`);
check(good.data.user.email === email, 'the session carries the user');
const firstRefresh = good.data.session.refresh_token;

const user = await supabase.auth.getUser();
check(!user.error && user.data.user.email === email, `getUser reads the signed-in user ${user.error ? user.error.message : ''}`);

const claims = await supabase.auth.getClaims();
check(!claims.error && claims.data && claims.data.claims.email === email,
  `getClaims validates the token ${claims.error ? claims.error.message : ''}`);

const refreshed = await supabase.auth.refreshSession();
check(!refreshed.error && refreshed.data.session, `refreshSession works ${refreshed.error ? refreshed.error.message : ''}`);
check(refreshed.data.session.refresh_token !== firstRefresh, 'the refresh token rotated');

const out = await supabase.auth.signOut();
check(!out.error, `signOut succeeds ${out.error ? out.error.message : ''}`);
const after = await supabase.auth.getSession();
check(after.data.session === null, 'getSession is empty after signOut');

const stale = await supabase.auth.getUser(refreshed.data.session.access_token);
// The server answers 403 session_not_found; auth-js turns that into AuthSessionMissingError.
check(stale.error && stale.error.name === 'AuthSessionMissingError' && stale.data.user === null,
  `the signed-out token no longer reads the user (${stale.error && stale.error.name})`);

console.log('supabase-js conformance: all passed');
