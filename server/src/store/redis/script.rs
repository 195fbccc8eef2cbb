//! The Lua scripts that make every decision of a write atomically on the Redis side: the
//! topic's epoch, its offsets, the idempotency check, the expected version, retention, and
//! the pub/sub notice to other nodes. Redis runs a script alone, so two nodes writing one
//! topic can never hand out an offset twice or both win one version.
//!
//! Every key a script touches is passed in `KEYS` and shares the topic's hash tag, so each
//! script runs within one Redis Cluster hash slot.

/// Write messages (a publish batch) or events (one append) to a topic.
///
/// `KEYS`: head hash, stream, idempotency hash, idempotency times (sorted set).
/// `ARGV`: channel, epoch for a new topic, now (ms), timestamp (RFC 3339), dedup cutoff
/// (ms), dedup window (ms), max messages (0 = any), max age (ms, 0 = any), expected
/// version (`""` = any), node id, then five per message: idempotency key (`""` = none),
/// data (JSON), from, event type (`""` = none), origin (`""` = none).
///
/// Returns `{epoch, first, latest, "ok", status1, offset1, ...}` with status 0 = stored,
/// 1 = duplicate of `offset`, 2 = the key was used for another payload at `offset`; or
/// `{epoch, first, latest, "conflict"}` when the expected version is not the latest.
///
/// Stream entry ids are `<offset>-0`, so `XRANGE` reads by offset and `XTRIM MINID` trims
/// by offset. Each entry holds `d` (data), `f` (from), `t` (timestamp), `m` (ms, for age
/// retention) and for events `e` (type). The notice published on the channel is one JSON
/// object per call: `{"node","epoch","timestamp","rows":[{"offset","origin","from","type",
/// "data"}]}`, built by concatenation (the data is JSON already).
pub const WRITE: &str = r#"
local h, s, ids, idt = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local channel, cand, now, ts = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local cutoff, window = tonumber(ARGV[5]), tonumber(ARGV[6])
local maxlen, maxage = tonumber(ARGV[7]), tonumber(ARGV[8])
local expected, node = ARGV[9], ARGV[10]
local function int(x) return string.format('%.0f', x) end
local head = redis.call('HMGET', h, 'e', 'l', 'f')
local epoch, latest, first = head[1], tonumber(head[2]), tonumber(head[3])
if not epoch then epoch, latest, first = cand, 0, 1 end
if expected ~= '' and tonumber(expected) ~= latest then
  return {epoch, first, latest, 'conflict'}
end
local out = {epoch, first, latest, 'ok'}
local rows, stored = {}, 0
for b = 11, #ARGV, 5 do
  local key, data, from, etype, origin = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local status, offset, sum = 0, 0, nil
  if key ~= '' then
    sum = redis.sha1hex(data)
    local prev = redis.call('HGET', ids, key)
    if prev then
      local o, at, was = string.match(prev, '^(%d+):(%d+):(%x+)$')
      if o and tonumber(at) >= cutoff then
        offset = tonumber(o)
        if was == sum then status = 1 else status = 2 end
      end
    end
  end
  if status == 0 then
    latest = latest + 1
    offset = latest
    if etype ~= '' then
      redis.call('XADD', s, int(offset) .. '-0', 'd', data, 'f', from, 't', ts, 'm', ARGV[3], 'e', etype)
    else
      redis.call('XADD', s, int(offset) .. '-0', 'd', data, 'f', from, 't', ts, 'm', ARGV[3])
    end
    if sum then
      redis.call('HSET', ids, key, int(offset) .. ':' .. ARGV[3] .. ':' .. sum)
      redis.call('ZADD', idt, now, key)
    end
    stored = stored + 1
    rows[stored] = '{"offset":' .. int(offset) .. ',"origin":' .. (origin == '' and 'null' or origin)
      .. ',"from":' .. cjson.encode(from) .. ',"type":' .. (etype == '' and 'null' or cjson.encode(etype))
      .. ',"data":' .. data .. '}'
  end
  out[#out + 1] = status
  out[#out + 1] = offset
end
if stored > 0 then
  if maxlen > 0 and latest - first + 1 > maxlen then
    first = latest - maxlen + 1
    redis.call('XTRIM', s, 'MINID', int(first) .. '-0')
  end
  if maxage > 0 then
    -- Age retention, a bounded step per write; a topic nobody writes expires as a whole.
    local oldest = redis.call('XRANGE', s, '-', '+', 'COUNT', 64)
    local keep = nil
    for _, entry in ipairs(oldest) do
      local fields, m = entry[2], nil
      for j = 1, #fields, 2 do if fields[j] == 'm' then m = tonumber(fields[j + 1]) end end
      if m and m < now - maxage then
        keep = tonumber(string.match(entry[1], '^(%d+)')) + 1
      else
        break
      end
    end
    if keep and keep > first then
      first = keep
      redis.call('XTRIM', s, 'MINID', int(first) .. '-0')
    end
  end
  redis.call('HSET', h, 'e', epoch, 'l', int(latest), 'f', int(first))
  if maxage > 0 then
    redis.call('PEXPIRE', h, maxage)
    redis.call('PEXPIRE', s, maxage)
  end
  redis.call('PUBLISH', channel, '{"node":"' .. node .. '","epoch":"' .. epoch .. '","timestamp":"' .. ts
    .. '","rows":[' .. table.concat(rows, ',') .. ']}')
end
if window > 0 and redis.call('EXISTS', idt) == 1 then
  local old = redis.call('ZRANGEBYSCORE', idt, '-inf', '(' .. int(cutoff), 'LIMIT', 0, 64)
  if #old > 0 then
    redis.call('HDEL', ids, unpack(old))
    redis.call('ZREM', idt, unpack(old))
  end
  redis.call('PEXPIRE', ids, window)
  redis.call('PEXPIRE', idt, window)
end
out[2], out[3] = first, latest
return out
"#;

/// Save a snapshot unless a newer one is stored. `KEYS`: the snapshot hash. `ARGV`: version,
/// state (JSON). Returns 1 when saved.
pub const SNAPSHOT: &str = r#"
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if tonumber(ARGV[1]) < v then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 's', ARGV[2])
return 1
"#;

/// Members joined a presence topic, or are still there (a refresh): add or re-arm each.
///
/// `KEYS`: members hash (client id → member JSON), expiries (sorted set: client id → ms),
/// users (hash: user → members). `ARGV`: expiry (ms), ttl (ms), channel, node, then four per
/// member: client id, user, member JSON, the `join` frame. A member that was not listed (new,
/// or reaped while its node was away) is announced: `~<node>\n<frame>` on the channel.
pub const PRESENCE_JOIN: &str = r#"
local p, e, u = KEYS[1], KEYS[2], KEYS[3]
local expiry, ttl, channel, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
for b = 5, #ARGV, 4 do
  local cid, user, member, frame = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  if redis.call('HSET', p, cid, member) == 1 then
    redis.call('HINCRBY', u, user, 1)
    redis.call('PUBLISH', channel, '~' .. node .. '\n' .. frame)
  end
  redis.call('ZADD', e, expiry, cid)
end
redis.call('PEXPIRE', p, ttl)
redis.call('PEXPIRE', e, ttl)
redis.call('PEXPIRE', u, ttl)
return 0
"#;

/// Members left a presence topic. `KEYS` as [`PRESENCE_JOIN`]. `ARGV`: channel, node, then
/// three per member: client id, user, the `leave` frame (announced only for a member that was
/// still listed, so a reaped member never leaves twice).
pub const PRESENCE_LEAVE: &str = r#"
local p, e, u = KEYS[1], KEYS[2], KEYS[3]
local channel, node = ARGV[1], ARGV[2]
for b = 3, #ARGV, 3 do
  local cid, user, frame = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  if redis.call('HDEL', p, cid) == 1 then
    redis.call('ZREM', e, cid)
    if redis.call('HINCRBY', u, user, -1) <= 0 then redis.call('HDEL', u, user) end
    redis.call('PUBLISH', channel, '~' .. node .. '\n' .. frame)
  end
end
return 0
"#;

/// Reap members whose node stopped refreshing them (announcing each `leave` to every node),
/// then read the topic's presence. `KEYS` as [`PRESENCE_JOIN`]. `ARGV`: now (ms), channel,
/// the topic as a JSON string, most members to return (0: only the counts).
///
/// Returns `{clients, users, member JSON...}`; one member more than asked means "more".
/// The `leave` frame is `{"type":"leave","topic":<topic>,` followed by the stored member JSON
/// without its `{` — the member JSON is the protocol's own encoding, so the frame is exactly
/// what the protocol crate would build.
pub const PRESENCE_READ: &str = r#"
local p, e, u = KEYS[1], KEYS[2], KEYS[3]
local now, channel, topic, max = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local gone = redis.call('ZRANGEBYSCORE', e, '-inf', '(' .. now, 'LIMIT', 0, 256)
for _, cid in ipairs(gone) do
  local member = redis.call('HGET', p, cid)
  redis.call('ZREM', e, cid)
  if member then
    redis.call('HDEL', p, cid)
    local user = cjson.decode(member).user
    if redis.call('HINCRBY', u, user, -1) <= 0 then redis.call('HDEL', u, user) end
    redis.call('PUBLISH', channel, '~reaper\n{"type":"leave","topic":' .. topic .. ',' .. string.sub(member, 2))
  end
end
local out = {redis.call('ZCOUNT', e, now, '+inf'), redis.call('HLEN', u)}
if max > 0 then
  local ids = redis.call('ZRANGEBYSCORE', e, now, '+inf', 'LIMIT', 0, max + 1)
  if #ids > 0 then
    local members = redis.call('HMGET', p, unpack(ids))
    for _, m in ipairs(members) do
      if m then out[#out + 1] = m end
    end
  end
end
return out
"#;
