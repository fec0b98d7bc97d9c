local p, me = ARGV[1], ARGV[2]
local n = 0
local alive = {}
local function live(node)
  if alive[node] == nil then alive[node] = redis.call('EXISTS', p..'node:'..node) == 1 end
  return alive[node]
end
-- The messages a lapsed node had not read (its inbox after its last trim) are routed again,
-- each with its deadline: to the id's holder if a live node holds it now, else into its
-- offline queue (expiring no later than the message), so each is delivered or EXPIREd
-- rather than dropped with the stream. A batch the node read just before it lapsed, whose
-- trim never landed, goes again too (at most one batch may repeat).
local function take_over(node)
  local inbox = p..'inbox:'..node
  local entries = redis.call('XRANGE', inbox, '-', '+', 'COUNT', 1000)
  local out = {}
  for _, e in ipairs(entries) do
    local f = e[2]
    if f[1] == 't' and f[2] == 'b' then
      local m = {}
      for j = 3, #f - 1, 2 do
        local k, v = f[j], f[j + 1]
        if k == 'k' then m = {kind = v} else m[k] = v end
        if k == 'i' and m.kind and m.s and m.d and m.m then
          local dst = m.d
          local owner = redis.call('HGET', p..'id:'..dst, 'node')
          if owner and owner ~= node and live(owner) then
            local b = out[owner]
            if not b then b = {}; out[owner] = b end
            local x = #b
            b[x + 1], b[x + 2], b[x + 3], b[x + 4], b[x + 5], b[x + 6] = 'k', m.kind, 's', m.s, 'd', dst
            b[x + 7], b[x + 8], b[x + 9], b[x + 10], b[x + 11], b[x + 12] = 'm', m.m, 'e', m.e or '0', 'i', v
          elseif m.kind ~= 'LEAVE' and m.kind ~= 'EXPIRE' then
            local q = p..'q:'..dst
            local due = tonumber(m.e or '0') or 0
            if redis.call('LLEN', q) == 0 then
              redis.call('ZADD', p..'qd', due, dst)
            else
              redis.call('ZADD', p..'qd', 'LT', due, dst)
            end
            redis.call('RPUSH', q, m.s, m.m, v)
            redis.call('INCR', p..'queued')
          end
          m = {}
        end
      end
    end
    redis.call('XDEL', inbox, e[1])
  end
  for owner, b in pairs(out) do
    for s = 1, #b, 12 * 200 do
      redis.call('XADD', p..'inbox:'..owner, 'MAXLEN', '~', 100000, '*', 't', 'b',
        unpack(b, s, math.min(s + 12 * 200 - 1, #b)))
    end
  end
  return #entries < 1000
end
for _, node in ipairs(redis.call('SMEMBERS', p..'nodes')) do
  if node ~= me and not live(node) then
    local set = p..'ids:'..node
    local ids = redis.call('SPOP', set, 1000)
    for _, id in ipairs(ids) do
      if redis.call('HGET', p..'id:'..id, 'node') == node then redis.call('DEL', p..'id:'..id) end
    end
    n = n + #ids
    local emptied = take_over(node)
    if emptied and redis.call('SCARD', set) == 0 then
      redis.call('SREM', p..'nodes', node)
      redis.call('DEL', p..'inbox:'..node, p..'seen:'..node)
    end
  end
end
return n
