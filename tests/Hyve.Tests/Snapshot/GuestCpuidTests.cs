// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Snapshot;
using Hyve.Vmm.Control;
using Xunit;

namespace Hyve.Tests.Snapshot;

/// <summary>The CPU features a snapshot records for its guest and what a restore compares.</summary>
public class GuestCpuidTests
{
    private static readonly CpuTopology One = new(1, 1, 1, 1);

    [Fact]
    public void The_software_cpu_lacks_nothing_it_offered_itself_and_names_what_another_engine_offered_more()
    {
        var soft = GuestCpuid.Soft(One);
        Assert.Contains(soft, kv => kv.Key == "1.edx");
        Assert.Empty(GuestCpuid.Missing(soft, soft));
        // A guest that saw AVX2, SHA and RDTSCP (a KVM host's), restored where they are absent.
        var more = soft.Select(kv => kv.Key switch
        {
            "7.0.ebx" => new KeyValuePair<string, string>(kv.Key, (Convert.ToUInt32(kv.Value, 16) | 1u << 5 | 1u << 29).ToString("x8")),
            "80000001.edx" => new KeyValuePair<string, string>(kv.Key, (Convert.ToUInt32(kv.Value, 16) | 1u << 27).ToString("x8")),
            _ => kv,
        }).ToList();
        var missing = GuestCpuid.Missing(more, [.. soft.Where(kv => kv.Key != "80000001.edx")]);
        Assert.Contains("avx2", missing);
        Assert.Contains("sha_ni", missing);
        Assert.Contains("rdtscp", missing);
        Assert.Contains("lm", missing); // the whole word is absent on the other side: every bit it had is missing
    }

    [Fact]
    public void Bits_that_follow_the_guest_or_the_topology_are_not_compared_and_unknown_bits_are_named_by_position()
    {
        var saved = new List<KeyValuePair<string, string>> { new("1.ecx", "08000000"), new("1.edx", "10000000"), new("7.0.ecx", "00000010"), new("7.0.edx", "00000001") };
        var now = new List<KeyValuePair<string, string>> { new("1.ecx", "0"), new("1.edx", "0"), new("7.0.ecx", "0"), new("7.0.edx", "0"), new("x.y", "ffffffff") };
        Assert.Equal(["cpuid.7.0.edx[0]"], GuestCpuid.Missing(saved, now)); // OSXSAVE, HTT and OSPKE ignored
    }
}
