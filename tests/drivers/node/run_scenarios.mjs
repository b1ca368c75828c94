// The Node half of the driver matrix: runs tests/drivers/scenarios.json
// through node-postgres (pg) and postgres.js (postgres), both at once, and
// prints what each driver saw as JSON on stdout, in the observation format
// of tests/drivers/python_runner.py (its docstring describes it); progress
// goes to stderr. tests/drivers/test_driver_matrix.py runs it and checks the
// output with matrix.py; by hand, after `npm ci` in this directory:
//
//   node run_scenarios.mjs --host /tmp/socket_dir --port 5432 --dbname drv_pg \
//       --user drv_app --admin-user postgres --vars '{"known_event_id": 1, ...}' \
//       --token-shape 'pgsa_...' [--driver node-postgres|postgres.js]
//
// The scenarios drop and create the extension in --dbname: the test gives
// each driver a database of its own, and so runs this once per driver.
//
// Both drivers run every call as a server-side prepared statement:
// node-postgres with a statement name (the call's name: one text per name),
// postgres.js with sql.unsafe(text, args, {prepare: true}). jsonb comes back
// as the text the server sent and a string argument for a jsonb parameter
// goes out as is (node-postgres: a type parser; postgres.js: a type whose
// serialize and parse are the identity, since by default it would
// JSON.stringify the string and JSON.parse the result), so documents can be
// compared byte for byte. No token is printed: tokens become labels. An
// error's texts are searched for --token-shape (matrix.TOKEN_SHAPE) as the
// driver gave them, then redacted: a token seen becomes its label, anything
// else shaped like one "token:unseen".

import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import postgres from 'postgres'

const JSONB = 3802
const STATEMENT_TIMEOUT_MS = 30000
const RUN_TIMEOUT_MS = 120000
const TOKEN = /^pgsa_[a-z]{2}_/

const { values: opts } = parseArgs({
  options: {
    host: { type: 'string' },
    port: { type: 'string', default: '5432' },
    dbname: { type: 'string', default: 'postgres' },
    user: { type: 'string' },
    'admin-user': { type: 'string', default: 'postgres' },
    vars: { type: 'string', default: '{}' },
    driver: { type: 'string', multiple: true },
    'token-shape': { type: 'string' },
    scenarios: { type: 'string', default: new URL('../scenarios.json', import.meta.url).pathname },
  },
})

if (!opts['token-shape']) throw new Error('--token-shape is required (matrix.TOKEN_SHAPE)')
const TOKEN_SHAPE = new RegExp(opts['token-shape'], 'g')
const spec = JSON.parse(readFileSync(opts.scenarios, 'utf8'))
const runVars = JSON.parse(opts.vars)
const nowUs = () => Date.now() * 1000

// Token -> stable label, so observations can be compared without tokens.
class Labels {
  constructor () { this.labels = new Map() }
  label (token) {
    if (!this.labels.has(token)) this.labels.set(token, `token:${token.slice(0, 8)}:${token.length}:#${this.labels.size + 1}`)
    return this.labels.get(token)
  }
  redact (text) {
    if (!text) return text ?? null
    for (const [token, label] of this.labels) text = text.split(token).join(label)
    return text.replace(TOKEN_SHAPE, 'token:unseen')
  }
}

// The name of the JavaScript type the driver returned.
function native (value) {
  if (value instanceof Date) return 'Date'
  if (Array.isArray(value)) return 'Array'
  return typeof value
}

function normalise (value, labels) {
  if (value === null || value === undefined) return null
  if (value instanceof Date) return { ts_us: value.getTime() * 1000 }
  if (typeof value === 'string') return TOKEN.test(value) ? labels.label(value) : value
  if (typeof value === 'bigint') return value.toString()
  if (Array.isArray(value)) return value.map(v => normalise(v, labels))
  return value
}

function resolve (arg, scenarioVars, saved) {
  if (arg === null || typeof arg !== 'object') return arg
  if ('var' in arg) return scenarioVars[arg.var]
  if ('ref' in arg) {
    const [name, column] = arg.ref.split('.')
    return saved[name][column]
  }
  if ('data' in arg) return spec.data[arg.data]
  if ('repeat' in arg) return (arg.prefix ?? '') + arg.repeat.repeat(arg.times) + (arg.suffix ?? '')
  throw new Error(`unknown argument form ${JSON.stringify(arg)}`)
}

// Every text of an error as the driver gives it (message, detail, hint,
// where, ...), before any redaction.
function rawTexts (e) {
  return [e.message, ...Object.values(e)].filter(v => typeof v === 'string')
}

function errorOf (e, labels) {
  const tokenShaped = rawTexts(e).some(t => t.search(TOKEN_SHAPE) >= 0)
  return {
    sqlstate: e.code ?? null, message: labels.redact(e.message), hint: labels.redact(e.hint), token_shaped: tokenShaped,
  }
}

// node-postgres: a Client per connection, named prepared statements.
const nodePostgres = {
  name: 'node-postgres',
  version: JSON.parse(readFileSync(new URL('./node_modules/pg/package.json', import.meta.url))).version,
  async connect (user) {
    const client = new pg.Client({
      host: opts.host, port: Number(opts.port), user, database: opts.dbname,
      statement_timeout: STATEMENT_TIMEOUT_MS, application_name: 'pg_session_auth_drivers',
      types: { getTypeParser: (oid, format) => oid === JSONB ? (v => v) : pg.types.getTypeParser(oid, format) },
    })
    await client.connect()
    return client
  },
  async query (client, callName, sql, args) {
    const result = await client.query({ name: callName, text: sql, values: args })
    return { columns: result.fields.map(f => f.name), rows: result.rows.map(r => result.fields.map(f => r[f.name])) }
  },
  async admin (client, sql) { await client.query(sql) },
  async close (client) { await client.end() },
}

// postgres.js: one connection per pool (max: 1), prepared statements.
const postgresJs = {
  name: 'postgres.js',
  version: JSON.parse(readFileSync(new URL('./node_modules/postgres/package.json', import.meta.url))).version,
  async connect (user) {
    const sql = postgres({
      host: opts.host, port: Number(opts.port), user, database: opts.dbname, max: 1, onnotice: () => {},
      connection: { statement_timeout: STATEMENT_TIMEOUT_MS, application_name: 'pg_session_auth_drivers' },
      types: { jsonbText: { to: JSONB, from: [JSONB], serialize: x => x, parse: x => x } },
    })
    await sql`SELECT 1`
    return sql
  },
  async query (sql, callName, text, args) {
    const result = await sql.unsafe(text, args, { prepare: true })
    const columns = result.columns.map(c => c.name)
    return { columns, rows: Array.from(result, r => columns.map(c => r[c])) }
  },
  async admin (sql, text) { await sql.unsafe(text) },
  async close (sql) { await sql.end({ timeout: 5 }) },
}

const DRIVERS = { 'node-postgres': nodePostgres, 'postgres.js': postgresJs }

class Walker {
  constructor (driver, app, admin) {
    Object.assign(this, { driver, app, admin, labels: new Labels() })
  }

  async scenario (scenario) {
    const scenarioVars = { ...runVars, user: `drv:${this.driver.name}:${scenario.name}` }
    const saved = {}
    const steps = []
    for (const step of scenario.steps) steps.push(await this.step(step, scenarioVars, saved))
    return { name: scenario.name, vars: scenarioVars, steps }
  }

  async step (step, scenarioVars, saved) {
    if ('sleep' in step) {
      await sleep(step.sleep * 1000)
      return { sleep: step.sleep }
    }
    if ('admin' in step) {
      try {
        await this.driver.admin(this.admin, step.admin)
        return { admin: step.admin, error: null }
      } catch (e) {
        return { admin: step.admin, error: errorOf(e, this.labels) }
      }
    }
    if ('loop' in step) return this.loop(step, scenarioVars, saved)
    return this.call(step, scenarioVars, saved)
  }

  async call (step, scenarioVars, saved) {
    const args = step.args.map(a => resolve(a, scenarioVars, saved))
    const obs = { call: step.call, t0_us: nowUs() }
    let columns = []
    let rows = []
    try {
      ({ columns, rows } = await this.driver.query(this.app, step.call, spec.calls[step.call].sql, args))
      obs.error = null
    } catch (e) {
      if (e.code === undefined) throw e // not an error from the server: a bug here
      obs.error = errorOf(e, this.labels)
    }
    obs.t1_us = nowUs()
    if (step.save && rows.length) saved[step.save] = Object.fromEntries(columns.map((c, i) => [c, rows[0][i]]))
    obs.columns = columns
    obs.types = Object.fromEntries(columns.map((c, i) =>
      [c, [...new Set(rows.filter(r => r[i] !== null).map(r => native(r[i])))].sort()]))
    obs.rows = rows.map(r => Object.fromEntries(columns.map((c, i) => [c, normalise(r[i], this.labels)])))
    return obs
  }

  async loop (step, scenarioVars, saved) {
    const obs = { loop: step.loop, done: 0, outcomes: {}, at: [], error: null }
    for (let i = 0; i < step.loop; i++) {
      for (const extra of (step.at ?? {})[String(i)] ?? []) obs.at.push(await this.step(extra, scenarioVars, saved))
      for (const inner of step.steps) {
        const result = await this.call(inner, scenarioVars, saved)
        const counts = (obs.outcomes[inner.call] ??= {})
        const outcome = outcomeOf(result, spec.calls[inner.call])
        counts[outcome] = (counts[outcome] ?? 0) + 1
        if (result.error) {
          obs.error = { iteration: i, call: inner.call, ...result.error }
          return obs
        }
      }
      obs.done = i + 1
    }
    return obs
  }
}

// What a call in a loop came to: its status, its SQLSTATE, other columns
// than the call's, or 'row'.
function outcomeOf (result, call) {
  if (result.error) return `error ${result.error.sqlstate}`
  const names = call.columns.map(([c]) => c)
  if (result.columns.join(',') !== names.join(',')) return `columns ${result.columns.join(',')}`
  if (result.rows.length === 1) return result.rows[0].status ?? 'row'
  return `${result.rows.length} rows`
}

async function runDriver (driver) {
  const app = await driver.connect(opts.user)
  const admin = await driver.connect(opts['admin-user'])
  try {
    const walker = new Walker(driver, app, admin)
    const scenarios = []
    for (const scenario of spec.scenarios) {
      scenarios.push(await walker.scenario(scenario))
      process.stderr.write(`${driver.name}: ${scenario.name} done\n`)
    }
    return { driver: driver.name, version: driver.version, scenarios }
  } finally {
    await driver.close(app)
    await driver.close(admin)
  }
}

const names = opts.driver ?? Object.keys(DRIVERS)
const deadline = setTimeout(() => {
  process.stderr.write(`run_scenarios.mjs: still running after ${RUN_TIMEOUT_MS} ms, giving up\n`)
  process.exit(2)
}, RUN_TIMEOUT_MS)
const results = await Promise.all(names.map(n => runDriver(DRIVERS[n])))
clearTimeout(deadline)
process.stdout.write(JSON.stringify({ drivers: Object.fromEntries(results.map(r => [r.driver, r])) }) + '\n')
