-- Routes a batch of messages in order. Messages for ids held on a live node are coalesced
-- into one inbox entry per holder (per chunk), so the holder reads them in one go.
local p, me = ARGV[1], ARGV[2]
local per_dst, total = tonumber(ARGV[3]), tonumber(ARGV[4])
local CHUNK = 200
local alive, out, batches, order = {}, {}, {}, {}
local function live(node)
  if alive[node] == nil then alive[node] = redis.call('EXISTS', p..'node:'..node) == 1 end
  return alive[node]
end
local function held(id)
  local owner = redis.call('HGET', p..'id:'..id, 'node')
  if owner and live(owner) then return owner end
  return nil
end
local queued = nil
local now_ms = nil
for i = 5, #ARGV, 8 do
  local kind, src, dst, text = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local ttl, requeue, notice, mid = tonumber(ARGV[i + 4]), ARGV[i + 5] == '1', ARGV[i + 6] == '1', ARGV[i + 7]
  local r
  local owner = nil
  if notice and held(src) then
    r = 'held'
  else
    owner = held(dst)
    if owner and not (requeue and owner == me) then
      local b = batches[owner]
      if not b then
        b = {}
        batches[owner] = b
        order[#order + 1] = owner
      end
      -- The deadline ('e', ms on this master's clock) goes along: if the holder's lease lapses
      -- before it reads the message, the reaper queues it with this deadline.
      if now_ms == nil then
        local t = redis.call('TIME')
        now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
      end
      local n = #b
      b[n + 1], b[n + 2], b[n + 3], b[n + 4], b[n + 5] = 'k', kind, 's', src, 'd'
      b[n + 6], b[n + 7], b[n + 8], b[n + 9], b[n + 10] = dst, 'm', text, 'e', now_ms + ttl
      b[n + 11], b[n + 12] = 'i', mid
      -- The holder goes back, so the sender can send later messages for dst straight there too.
      r = 'sent:'..owner
    elseif kind == 'LEAVE' or kind == 'EXPIRE' then
      r = 'dropped'
    else
      if queued == nil then queued = tonumber(redis.call('GET', p..'queued') or '0') end
      local q = p..'q:'..dst
      local len = redis.call('LLEN', q)
      if queued >= total or len >= 3 * per_dst then
        r = 'full'
      else
        if len == 0 then
          local t = redis.call('TIME')
          redis.call('ZADD', p..'qd', t[1] * 1000 + math.floor(t[2] / 1000) + ttl, dst)
        end
        redis.call('RPUSH', q, src, text, mid)
        redis.call('INCR', p..'queued')
        queued = queued + 1
        r = 'queued'
      end
    end
  end
  out[#out + 1] = r
end
for _, owner in ipairs(order) do
  local b = batches[owner]
  for s = 1, #b, 12 * CHUNK do
    redis.call('XADD', p..'inbox:'..owner, 'MAXLEN', '~', 100000, '*', 't', 'b',
      unpack(b, s, math.min(s + 12 * CHUNK - 1, #b)))
  end
end
return out
