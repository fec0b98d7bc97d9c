local p = ARGV[1]
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', p..'nodes')) do
  if redis.call('EXISTS', p..'node:'..node) == 1 then
    for _, id in ipairs(redis.call('SMEMBERS', p..'ids:'..node)) do
      out[#out + 1] = {redis.call('HGET', p..'id:'..id, 'reg') or '0', id}
    end
  end
end
return out
